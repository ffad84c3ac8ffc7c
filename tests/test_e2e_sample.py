"""End to end on the real sample model (SmolLM2-135M, fetched through pip once and cached)."""

import json
import math

import pytest
import torch

import tensorpress

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def rtn_out(sample, tmp_path_factory):
    out = tmp_path_factory.mktemp("e2e") / "rtn"
    tensorpress.compress(sample.model, "rtn-w4g64", out, eval_text="kjv:eval", windows=4, seqlen=256)
    return out


def test_sample_is_a_real_llama(sample):
    cfg = json.loads((sample.model / "config.json").read_text())
    assert cfg["model_type"] == "llama" and cfg["num_hidden_layers"] == 30 and cfg["hidden_size"] == 576
    assert cfg["tie_word_embeddings"] is True
    assert sample.calib.read_text().startswith("In the beginning God created")
    assert sample.eval.read_text().startswith("The book of the generation of Jesus Christ")


def test_report_on_sample(rtn_out):
    rep = json.loads((rtn_out / "report.json").read_text())
    assert rep["tokens"] == 4 * 255
    assert 5 < rep["ppl_base"] < 40  # an instruct model on the KJV New Testament
    assert rep["ppl_base"] < rep["ppl"] < 2 * rep["ppl_base"]
    assert 0.05 < rep["kl"] < 2 and 0.4 < rep["top1_agreement"] < 1
    assert rep["bits_per_weight"] == pytest.approx(4.25)  # 4 + 16/64
    assert rep["size_bytes"] < 0.5 * rep["size_bytes_base"]


def test_transformers_loads_sample_output_with_same_logits(rtn_out):
    from transformers import AutoModelForCausalLM

    ids = torch.randint(0, 49152, (1, 48), generator=torch.Generator().manual_seed(0))
    hf = AutoModelForCausalLM.from_pretrained(str(rtn_out), dtype=torch.float32)
    with torch.no_grad():
        a = hf(input_ids=ids).logits
        b = tensorpress.load(rtn_out)(input_ids=ids).logits
    assert torch.equal(a, b)


def test_independent_perplexity_matches_report(rtn_out, sample):
    """Plain transformers + compressed-tensors, own windowing: within 0.5% of the report."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(rtn_out))
    model = AutoModelForCausalLM.from_pretrained(str(rtn_out), dtype=torch.float32)
    ids = tok(sample.eval.read_text(), add_special_tokens=False)["input_ids"]
    nll, n = 0.0, 0
    for w in range(4):
        window = torch.tensor([ids[w * 256 : (w + 1) * 256]])
        with torch.no_grad():
            loss = model(input_ids=window, labels=window).loss  # mean over the 255 predicted tokens
        nll += float(loss) * 255
        n += 255
    rep = json.loads((rtn_out / "report.json").read_text())
    assert math.exp(nll / n) == pytest.approx(rep["ppl"], rel=0.005)
