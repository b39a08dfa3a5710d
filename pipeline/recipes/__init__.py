"""Jobs: Step lists that chain stages over one run directory (one module per job), the runner that applies a
stage shard by shard, run in-process by the CLI and as Prefect tasks by flows/. May import every pipeline
subpackage but cli."""
from __future__ import annotations

from pipeline.recipes.audit import audit_job, audit_step
from pipeline.recipes.codeclm import codeclm_steps
from pipeline.recipes.curate import DEDUP_METHODS, SELECTORS, curate_job, curate_steps
from pipeline.recipes.magpie import magpie_job, magpie_steps, write_plan
from pipeline.recipes.mining import bleuberi_job, bleuberi_steps, feedback_job, feedback_steps, moi_job, moi_step
from pipeline.recipes.selfalign import (guide_align_job, guided_step, guideline_library_steps, honesty_job, honesty_steps,
                                        isheep_job, isheep_steps, urial_job, urial_step)
from pipeline.recipes.mcts import MCTS_DATASETS, mcts_dataset_step, mcts_job, mcts_search_step
from pipeline.recipes.reasoning import distill_job, distill_steps, tools_job, tools_steps
from pipeline.recipes.steps import Step, export_parquet, input_job, run_step, run_steps, write_input
from pipeline.recipes.tag import tag_steps
from pipeline.recipes.recipe import RecipeError, load_recipe
from pipeline.recipes.recipe_jobs import job_recipe, recipe_job

SYNTHESIS_METHODS = ("magpie", "codeclm", "mcts")


MINING_METHODS = ("feedback", "bleuberi", "audit", "honesty", "urial", "moi")


def mining_steps(method: str, **options) -> list[Step]:
    """The steps of one method over the user's data: feedback_steps, bleuberi_steps, the audit step (options:
    against=PATH, field, ngram), honesty_steps, the URIAL step or the MoI packing step (options: system_prompts, ...)."""
    if method == "feedback":
        return feedback_steps(**options)
    if method == "bleuberi":
        return bleuberi_steps(**options)
    if method == "audit":
        return [audit_step(**options)]
    if method == "honesty":
        return honesty_steps(**options)
    if method == "urial":
        return [urial_step(**options)]
    if method == "moi":
        return [moi_step(**options)]
    raise ValueError(f"unknown mining method {method!r}; valid: {list(MINING_METHODS)}")


def synthesis_steps(method: str, **options) -> list[Step]:
    """The steps of one synthesis method: magpie_steps, codeclm_steps, or the MCTS search followed by its
    SFT rows (the DPO and step datasets are built by `aligndata mcts`)."""
    if method == "magpie":
        return magpie_steps(**options)
    if method == "codeclm":
        return codeclm_steps(**options)
    if method == "mcts":
        return [mcts_search_step(**options), mcts_dataset_step("sft")]
    raise ValueError(f"unknown synthesis method {method!r}; valid: {list(SYNTHESIS_METHODS)}")


__all__ = ["distill_job", "distill_steps", "tools_job", "tools_steps", "RecipeError", "job_recipe", "load_recipe", "recipe_job", "urial_job", "urial_step", "moi_step", "guide_align_job", "guided_step", "guideline_library_steps", "moi_job", "honesty_job", "honesty_steps", "isheep_job", "isheep_steps", "MINING_METHODS", "audit_job", "audit_step", "mining_steps", "bleuberi_job", "bleuberi_steps", "feedback_job", "feedback_steps", "DEDUP_METHODS", "MCTS_DATASETS", "SELECTORS", "SYNTHESIS_METHODS", "Step", "codeclm_steps", "curate_job",
           "curate_steps", "export_parquet", "input_job", "magpie_job", "magpie_steps", "mcts_dataset_step", "mcts_job",
           "mcts_search_step", "run_step", "run_steps", "synthesis_steps", "tag_steps", "write_input", "write_plan"]
