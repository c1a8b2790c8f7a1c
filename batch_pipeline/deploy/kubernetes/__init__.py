"""Running the service on Kubernetes with Dagster's Helm chart (README: Scaling out, Kubernetes).

The YAML files beside this module are the recipe; `gpu_tag` and `launcher` are the code it needs.
"""
