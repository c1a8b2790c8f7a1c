"""What the tests share as a library: models and registries, batch files, processes, Dagster runs, fakes."""
