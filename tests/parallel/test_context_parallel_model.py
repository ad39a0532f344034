"""Context parallelism in the model: CP=2 and CP=4 (and TP2 x CP2) give the single-process loss and
every gradient, for Llama and for Gemma at T = 48 > window 8, so local layers exchange halos while
global layers run the ring."""

import pytest

from cp_model_workers import check_cases
from spawn import run_distributed


@pytest.fixture(scope="module")
def folders(hf_checkpoint):
    return {"llama": str(hf_checkpoint("Llama-3.1-8B")), "gemma": str(hf_checkpoint("gemma-3-1b-it"))}


def test_cp2(folders):
    run_distributed(check_cases, 2, [dict(folder=folders[f], cp=2) for f in folders])


def test_cp4_and_tp2_cp2(folders):
    cases = [dict(folder=folders[f], cp=4) for f in folders] + [dict(folder=folders["gemma"], cp=2, tp=2)]
    run_distributed(check_cases, 4, cases)
