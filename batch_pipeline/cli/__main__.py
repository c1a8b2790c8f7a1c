from batch_pipeline.cli.main import main

main()
