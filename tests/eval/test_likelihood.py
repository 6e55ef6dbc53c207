"""The image-token likelihood probe against a reference computation, its bounds and its sharding."""

from __future__ import annotations

import math
from contextlib import nullcontext

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from cl_platform.eval.likelihood import ImageLikelihoodProbe, image_ids, scored_positions
from cl_platform.eval.probe import ProbeSpec, build_probe
from cl_platform.mode import ModeConfig, routing_scope
from cl_platform.models.modality import ModalitySpec

# vocabulary of 32: text 0..9 (pad 0, sep 9), image codes 10..19, end-of-image 20, begin-of-image 21
SPEC = ModalitySpec(spec_id="t", vocab_size=32, image_code_range=(10, 20), boi_id=21, eoi_id=20, pad_id=0, sep_id=9)
ROWS = [([3, 4, 21, 11, 12, 13, 20], 2), ([21, 15, 15, 20], 0), ([5, 21, 10, 19, 18, 17, 16, 20], 1)]


def tiny_model(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                      num_key_value_heads=2, max_position_embeddings=32, pad_token_id=0)
    return LlamaForCausalLM(cfg).eval()


def reference_ce(model, rows, spec, *, all_image: bool = False) -> tuple[float, int]:
    """Row by row, no batching or padding: sum of -log q over scored positions, and their count
    (``all_image``: every token of a MoDE model routed to its visual LoRA by an explicit mask)."""
    ids = image_ids(spec)
    total, n = 0.0, 0
    for tokens, plen in rows:
        scope = routing_scope(model, torch.ones(1, len(tokens), dtype=torch.bool)) if all_image else nullcontext()
        with torch.no_grad(), scope:
            logits = model(input_ids=torch.tensor([tokens])).logits[0].double()
        for j in range(max(1, plen), len(tokens)):
            if spec.image_token_ranges[0][0] <= tokens[j] < spec.image_token_ranges[-1][1]:
                logq = logits[j - 1, ids].log_softmax(-1)
                total -= float(logq[(ids == tokens[j]).nonzero()[0, 0]])
                n += 1
    return total, n


def test_scored_positions_skip_the_prompt_and_text():
    assert scored_positions([3, 4, 21, 11, 12, 20], 2, SPEC) == [2, 3, 4, 5]
    assert scored_positions([21, 11, 20], 0, SPEC) == [1, 2]  # position 0 has nothing before it
    assert scored_positions([3, 11, 21, 12, 20], 3, SPEC) == [3, 4]  # an image id inside the prompt is not scored


def test_partial_and_score_match_the_reference_formula():
    model = tiny_model()
    probe = ImageLikelihoodProbe(ROWS, SPEC, batch_size=2)  # batches pad rows of different lengths
    nll, count = probe.partial(model, 0, 1)
    ref_nll, ref_n = reference_ce(model, ROWS, SPEC)
    assert count == ref_n == 5 + 3 + 7
    assert nll == pytest.approx(ref_nll, rel=1e-5)
    v = 12  # ids 10..21
    assert probe.score(nll, count) == pytest.approx(max(0.0, 1 - (ref_nll / ref_n) / math.log(v)), abs=1e-6)


@pytest.mark.parametrize("routing", ["token", "sequence"])
def test_a_mode_model_is_scored_as_its_generation_routing_routes(routing):
    import peft

    model = peft.get_peft_model(tiny_model(2), ModeConfig(
        image_token_ranges=[list(r) for r in SPEC.image_token_ranges], generation_routing=routing,
        lora_dropout=0.0, r_text=2, r_image=2, num_experts=2, task_type="CAUSAL_LM"))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "mode_" in name:
                p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(len(name))) * 0.5)
    nll, count = ImageLikelihoodProbe(ROWS, SPEC, batch_size=2).partial(model, 0, 1)
    by_id, all_image = reference_ce(model, ROWS, SPEC), reference_ce(model, ROWS, SPEC, all_image=True)
    assert abs(by_id[0] - all_image[0]) > 1e-3  # the two routings score differently
    assert count == by_id[1]
    assert nll == pytest.approx(all_image[0] if routing == "sequence" else by_id[0], rel=1e-5)


def test_shards_sum_to_the_whole():
    model = tiny_model(1)
    probe = ImageLikelihoodProbe(ROWS, SPEC)
    whole = probe.partial(model, 0, 1)
    parts = [probe.partial(model, r, 2) for r in range(2)]
    assert sum(p[1] for p in parts) == whole[1]
    assert sum(p[0] for p in parts) == pytest.approx(whole[0], rel=1e-5)


class _Fixed(torch.nn.Module):
    """Logits that put ``margin`` on the row's next token (``margin`` 0: uniform)."""

    def __init__(self, margin: float) -> None:
        super().__init__()
        self.margin = margin
        self.w = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, attention_mask=None):
        nxt = torch.roll(input_ids, -1, dims=1)
        logits = torch.zeros(*input_ids.shape, 32) + self.w
        logits.scatter_(-1, nxt.unsqueeze(-1), self.margin)
        return type("Out", (), {"logits": logits})()


def test_bounds_uniform_is_zero_certain_is_one():
    probe = ImageLikelihoodProbe(ROWS, SPEC)
    assert probe.score(*probe.partial(_Fixed(0.0), 0, 1)) == pytest.approx(0.0, abs=1e-6)
    assert probe.score(*probe.partial(_Fixed(60.0), 0, 1)) == pytest.approx(1.0, abs=1e-6)
    assert probe.score(0.0, 0.0) == 0.0


def test_probe_spec_builds_by_factory_path_and_rejects_bad_ones(tmp_path):
    from cl_platform.store import Store

    with pytest.raises(ValueError, match="package.module:callable"):
        ProbeSpec(factory="no_colon")
    with pytest.raises(ValueError, match="cannot be imported"):
        build_probe({"factory": "cl_platform.eval.likelihood:nothing_here"}, Store(str(tmp_path)), SPEC, 0)
    with pytest.raises(TypeError, match="not a GenerationProbe"):
        build_probe({"factory": "tests.eval.test_likelihood:not_a_probe"}, Store(str(tmp_path)), SPEC, 0)
    assert build_probe(None, Store(str(tmp_path)), SPEC, 0) is None


def not_a_probe(**kwargs):
    """A factory that returns something else (for the test above)."""
    return object()
