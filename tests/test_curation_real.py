"""Curation stages on the real models: MiniLM embeddings from the wheel, SmolLM2 for IFD and the causal-LM embedding."""
import json

import numpy as np
import polars as pl
import pytest

from pipeline.score import embed
from pipeline.score import ifd
from pipeline.select import selection
from pipeline.engines import EngineSpec
from pipeline.recipes import curate_job
from pipeline.core.records import first_instructions

pytestmark = pytest.mark.real_llm


def frame(pairs):
    return pl.DataFrame({"id": [f"r{i}" for i in range(len(pairs))], "source": ["t"] * len(pairs),
                         "messages": [[{"role": "user", "content": q}, {"role": "assistant", "content": a}] for q, a in pairs],
                         "meta": ["{}"] * len(pairs)})


PAIRS = [("How do I boil an egg?", "Put it in boiling water for 9 minutes, then cool it in cold water."),
         ("What is the best way to boil an egg?", "Simmer it for nine minutes and cool it in ice water."),
         ("Write a haiku about autumn leaves.", "Red leaves drift and fall / the wind hums a quiet song / the branches stand bare."),
         ("Explain what a hash table is.", "A hash table maps keys to slots with a hash function so lookups take constant time on average.")]


def test_minilm_embeddings_are_unit_norm_and_semantic():
    out = embed.embed(frame(PAIRS))
    vectors = embed.matrix(out)
    assert vectors.shape == (4, 384) and np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert vectors[0] @ vectors[1] > 0.7 > vectors[0] @ vectors[2]


def test_causal_lm_embedding_is_padding_independent():
    from pipeline.engines.models import smollm2_hf_dir

    together = embed.matrix(embed.embed_causal_lm(frame(PAIRS[:2]), model=str(smollm2_hf_dir()), batch_size=2))
    alone = embed.matrix(embed.embed_causal_lm(frame(PAIRS[1:2]), model=str(smollm2_hf_dir()), batch_size=1))
    assert together.shape == (2, 576) and np.allclose(together[1], alone[0], atol=1e-4)


def test_reference_overlap_catches_a_paraphrase_with_changed_numbers():
    df = embed.embed(frame([("What is 17 times 23? Show your steps.", "391"), ("Write a haiku about autumn leaves.", "...")]))
    reference = ["What is 19 times 21? Show your steps.", "Name the largest planet in the solar system."]
    out = selection.reference_overlap(df, reference=reference, ngram=3)
    assert out["ref_similarity"][0] > 0.75 > out["ref_similarity"][1]
    assert out["ref_ngram_overlap"][0] > 0.0 and out["ref_ngram_overlap"][1] == 0.0


def test_ifd_on_smollm2(llamacpp):
    out = ifd.score(frame(PAIRS[:2]), engine=llamacpp)
    assert all(v is not None and 0.0 < v < 2.0 for v in out["ifd"].to_list())


def test_curate_job_on_real_models(tmp_path):
    source = tmp_path / "mine.jsonl"
    rows = [{"instruction": q, "input": "", "output": a} for q, a in PAIRS] + [{"instruction": PAIRS[0][0], "input": "", "output": "dup"}]
    source.write_text("\n".join(json.dumps(r) for r in rows))
    evals = tmp_path / "evals.jsonl"  # an eval set holding a rephrasing of one of our instructions
    evals.write_text(json.dumps({"instruction": "Could you explain what a hash table is?", "output": "-"}))
    summary = curate_job(tmp_path / "run", input_path=source, engine=EngineSpec.make("llamacpp"), k=3, tau=0.9,
                         reference=str(evals))
    assert summary["stages"]["dedup-exact"]["drops"] == {"dup_exact": 1}
    assert summary["stages"]["decontaminated"]["drops"] == {"not_contaminated": 1}
    out = pl.read_parquet(summary["export"])
    assert out.height <= 3 and out["deita_score"].null_count() == 0
    assert out["deita_score"].to_list() == sorted(out["deita_score"].to_list(), reverse=True)  # selection order


@pytest.mark.server
def test_a_scorer_server_killed_mid_stage_counts_engine_errors_and_the_rerun_completes(llama_server, tmp_path):
    """curate on the real SmolLM2 behind llama.cpp's OpenAI server: the server dies while deita scores the
    second shard; its rows are engine_error:connection, the run stops past the rate with the resume hint, and
    the re-run (server back on the same port) scores every row exactly once."""
    import threading
    from pathlib import Path

    from pipeline.core.rundir import read_manifest, read_shards
    from pipeline.engines import load_engine
    from pipeline.recipes.runner import EngineFailures

    data = Path(__file__).parent / "data" / "planted.jsonl"
    spec = EngineSpec.make("openai", "smollm2", base_url=llama_server.url,
                           options={"retries": 1, "backoff": 0.1, "timeout": 20, "concurrency": 2,
                                    "batch_rows": 8})  # one shard per engine call, so the kill hits the second
    engine = load_engine(spec)
    real_generate, killed = engine.generate, threading.Event()

    def generate_and_kill(prompts, sampling, seeds=None):
        if not killed.is_set() and len(list((tmp_path / "run" / "scored").glob("shard-*"))) == 1:
            killed.set()
            threading.Timer(0.3, llama_server.stop).start()
        return real_generate(prompts, sampling, seeds)

    run = dict(input_path=data, engine=spec, k=5, dedup=("exact",), shard_size=8)
    engine.generate = generate_and_kill
    try:
        with pytest.raises(EngineFailures, match="stage 'scored' shard 1: .*engine_error:connection.*run the same command again"):
            curate_job(tmp_path / "run", **run)
    finally:
        engine.generate = real_generate
    failed = [e for e in read_manifest(tmp_path / "run") if e.get("status") == "failed"]
    assert failed and failed[0]["stage"] == "scored" and failed[0]["drops"].get("engine_error:connection", 0) > 0
    llama_server.start()
    summary = curate_job(tmp_path / "run", **run)
    scored = read_shards(tmp_path / "run" / "scored")
    assert scored["id"].n_unique() == scored.height == summary["stages"]["quality-filtered"]["rows_out"] == 30
    assert scored["deita_score"].null_count() == 0


def test_the_embedder_is_a_choice_and_the_card_says_which_and_over_what(tmp_path):
    from pipeline.engines.models import smollm2_hf_dir

    same_question = [PAIRS[2], (PAIRS[2][0], "Pasta needs salted water and ten minutes at a rolling boil."), PAIRS[3]]
    minilm = embed.matrix(embed.embed(frame(same_question)))  # the first user turn
    deita = embed.matrix(embed.embed(frame(same_question), embedder=f"deita:{smollm2_hf_dir()}"))  # the whole conversation
    assert minilm.shape == (3, 384) and deita.shape == (3, 576)
    assert minilm[0] @ minilm[1] > 0.9999 and deita[0] @ deita[1] < 0.999  # only deita's reads the answers

    source = tmp_path / "data.jsonl"
    source.write_text("".join(json.dumps({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}) + "\n"
                              for q, a in PAIRS))
    # a small causal LM's last-token vectors are anisotropic (unrelated conversations at cosine ~0.98, the two egg
    # answers at 0.999), so tau is set per embedder: 0.995 here keeps one egg answer and the two other rows
    summary = curate_job(tmp_path / "run", input_path=source, engine=EngineSpec.make("llamacpp"), k=3, tau=0.995,
                         dedup=("exact",), embedder=f"deita:{smollm2_hf_dir()}")
    selected = pl.read_parquet(summary["export"])
    assert selected.height == 3 and len({PAIRS[0][0], PAIRS[1][0]} & set(first_instructions(selected))) == 1
    card = (tmp_path / "run" / "export" / "README.md").read_text()
    assert f"embedded: embeddings are deita's model-based embedding ({smollm2_hf_dir()}" in card
    assert "of the whole conversation (vicuna_v1.1)" in card
