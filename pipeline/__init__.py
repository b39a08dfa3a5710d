"""aligndata's library. Its subpackages follow the data, and each imports only the ones listed before it
(tests/test_architecture.py checks this, and that no module imports Prefect; flows/ does):

    core/      records (the schema), rundir (atomic shards, manifest, summary), inputs, secrets
    engines/   the Engine protocol, backends (vllm, openai, llamacpp, fake), chat templates, offline models
    score/     stages that add columns: deita, rewards and judges, tags, IFD, embeddings
    synth/     stages that make rows: magpie, codeclm, mcts (their searches and judges use score/)
    select/    stages that drop rows: dedup, decontamination, Repr Filter, ISA, Magpie presets
    ship/      what leaves a run: trainer exports, dataset card, Hub push, report
    recipes/   the runner (a stage over a run directory, shard by shard) and the jobs: Step lists per method
    cli/       the `aligndata` commands

`filters/` (Polars-expression filters by name) imports nothing from here.
"""
