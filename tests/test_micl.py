"""micl family units: PTGM trigger, IKD KL, weight fusion, LoRA-only gradients, VQA normalisation, CIDEr,
beam search, data determinism, params validation."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
import yaml

from cmml.errors import ConfigError
from cmml.families.micl.data import generate_task, log_mel, vocabulary
from cmml.families.micl.tasks import ORDERS
from cmml.families.micl.examples import prompt_example, to_example
from cmml.families.micl.methods.base import kl_div
from cmml.families.micl.methods.moincl import fuse, ptgm_mode
from cmml.families.micl.metrics import cider, matrix_metrics, normalise_answer, vqa_accuracy
from cmml.families.micl.model import Encoders, MiclModel, build_tokenizer, lora_layers
from cmml.families.micl.plan import resolve, validate

ROOT = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def model() -> MiclModel:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    tok = build_tokenizer(vocabulary())
    lm = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_positions=64, n_embd=32, n_layer=2, n_head=2,
                                    eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id))
    m = MiclModel(Encoders(8), lm, tok, {"r": 4, "alpha": 8, "dropout": 0.0})
    with torch.no_grad():  # non-zero LoRA B so that the adapters change the function
        for layer in lora_layers(m.lm).values():
            layer.lora_B["default"].weight.normal_(0, 0.5)
    return m.eval()


def samples(task: str, n: int, model: MiclModel) -> list[dict]:
    out = generate_task(0, task, "test", n)
    from cmml.families.micl.data import encoder_input

    with torch.no_grad():
        for s in out:
            s["grid"] = model.encoders.grid(s["modality"], encoder_input(s["modality"], s["x"].unsqueeze(0)))[0]
    return out


def test_ptgm_trigger_per_modality_and_released_global() -> None:
    assert ptgm_mode("image_qa", ["image_cap"]) == "caption"
    assert ptgm_mode("image_cap", ["image_qa"]) == "qa"
    assert ptgm_mode("video_qa", ["audio_cap", "image_cap"]) is None  # no captioning on video yet
    assert ptgm_mode("video_qa", ["audio_cap", "image_cap"], per_modality=False) == "caption"  # released: global
    assert ptgm_mode("audio_cap", ["video_qa", "image_cap"]) is None
    assert ptgm_mode("audio_cap", ["video_qa"], per_modality=False) == "qa"
    assert ptgm_mode("image_cap", ["image_cap"], per_modality=False) is None
    # order 1 of the paper: which steps trigger under each rule
    o = ORDERS["order1"]
    assert [ptgm_mode(o[s], o[:s]) for s in range(6)] == [None, None, None, "caption", "caption", "qa"]
    assert [ptgm_mode(o[s], o[:s], False) for s in range(6)] == [None, None, "caption", "caption", "caption", "qa"]


def test_ikd_kl_zero_for_equal_models_positive_otherwise(model: MiclModel) -> None:
    texts = [to_example({"modality": None, "grid": None, "kind": "qa", "question": "count the words : red", "answers": ["one"],
                         "pseudo_question": "", "pseudo_answer": ""}, None)]
    new, mask, _ = model.forward_batch(texts, CPU)
    old, _, _ = copy.deepcopy(model).forward_batch(texts, CPU)
    assert kl_div(new[mask.bool()], old[mask.bool()], 5.0).item() == pytest.approx(0.0, abs=1e-7)
    assert kl_div(new[mask.bool()], old[mask.bool()] * 0.5, 5.0).item() > 1e-6


@pytest.mark.parametrize("released", [False, True])
def test_fusion_alpha_one_keeps_new_alpha_zero_old(model: MiclModel, released: bool) -> None:
    m = copy.deepcopy(model)
    old = {n: p.detach().clone() for n, p in m.trainable().items()}
    with torch.no_grad():
        for p in m.trainable().values():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
    new = {n: p.detach().clone() for n, p in m.trainable().items()}
    fuse(m, old, 1.0, released=released, projections=True)
    assert all(torch.equal(p, new[n]) for n, p in m.trainable().items())
    fuse(m, old, 0.0, released=released, projections=True)
    for n, p in m.trainable().items():
        if released or n.startswith("adapters."):
            assert torch.allclose(p, old[n]), n
        elif "lora_B" in n:  # fixed: the old model is the merged base, so alpha 0 zeroes the new update
            assert not p.any(), n
        else:
            assert torch.equal(p, new[n]), n


def test_fixed_fusion_interpolates_full_weights(model: MiclModel) -> None:
    m = copy.deepcopy(model)
    ex = [prompt_example(s) for s in samples("image_cap", 2, m)]
    before = m.forward_batch(ex, CPU)[0]
    m.merge_lora(torch.Generator().manual_seed(0))
    assert torch.allclose(m.forward_batch(ex, CPU)[0], before, atol=1e-5)  # merging keeps the function
    base = {n: layer.get_base_layer().weight.detach().clone() for n, layer in lora_layers(m.lm).items()}
    with torch.no_grad():
        for layer in lora_layers(m.lm).values():
            layer.lora_B["default"].weight.normal_(0, 0.3)
    delta = {n: layer.get_delta_weight("default").clone() for n, layer in lora_layers(m.lm).items()}
    fuse(m, {n: p.detach().clone() for n, p in m.trainable().items()}, 0.25, released=False, projections=False)
    for n, layer in lora_layers(m.lm).items():
        assert torch.allclose(base[n] + layer.get_delta_weight("default"), base[n] + 0.25 * delta[n], atol=1e-6)


def test_only_adapters_and_lora_get_gradients(model: MiclModel) -> None:
    m = copy.deepcopy(model).train()
    logits, _, labels = m.forward_batch([to_example(s, None) for s in samples("audio_qa", 3, m)], CPU)
    m.target_loss(logits, labels).backward()
    with_grad = {n for n, p in m.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert with_grad and all("lora_" in n or n.startswith("adapters.") for n in with_grad)
    assert any("lora_" in n for n in with_grad) and any(n.startswith("adapters.audio") for n in with_grad)
    assert not any(p.requires_grad for n, p in m.named_parameters() if n.startswith("encoders.") or "base_layer" in n)


def test_vqa_normalisation_standard_examples() -> None:
    assert normalise_answer("Two") == "2"
    assert normalise_answer("the dog.") == "dog"
    assert normalise_answer("An apple") == "apple"
    assert normalise_answer("dont") == "don't"
    assert normalise_answer("yes!") == "yes"
    assert normalise_answer("fire-truck") == "firetruck" or normalise_answer("fire-truck") == "fire truck"
    assert vqa_accuracy("apple", ["apple"] * 2 + ["cherry"] * 8) == pytest.approx(2 / 3)
    assert vqa_accuracy("apple", ["apple"] * 7 + ["cherry"] * 3) == 1.0
    assert vqa_accuracy("three", ["3"]) == 1.0 and vqa_accuracy("two", ["3"]) == 0.0
    # released asymmetry: a ground truth with a hyphen can never match
    assert vqa_accuracy("plus-sign", ["plus-sign"]) == 1.0
    assert vqa_accuracy("plus-sign", ["plus-sign"], symmetric=False) == 0.0


def test_cider_hand_checked_pair() -> None:
    refs = [["a red disk in the top left"], ["two beeps then a hum sound"]]
    # identical candidates: every n-gram has idf log(2) and cosine 1, no length penalty -> 10 per image
    assert cider(["a red disk in the top left", "two beeps then a hum sound"], refs) == pytest.approx(10.0)
    assert cider(["blue square", "green cross"], refs) == pytest.approx(0.0)
    partial = cider(["a red disk in the top left", "green cross"], refs)
    assert partial == pytest.approx(5.0)


def test_beam_search_deterministic_and_batch_independent(model: MiclModel) -> None:
    exs = [prompt_example(s) for s in samples("video_qa", 4, model)]
    gen = {"num_beams": 3, "max_new_tokens": 5, "repetition_penalty": 1.15}
    a, b = model.generate(exs, CPU, gen), model.generate(exs, CPU, gen)
    assert a == b and len(a) == 4
    assert model.generate(exs[2:3], CPU, gen) == a[2:3]  # left padding does not change a sample's output


def test_data_deterministic_and_log_mel() -> None:
    a, b = generate_task(3, "audio_cap", "train", 4), generate_task(3, "audio_cap", "train", 4)
    assert all(torch.equal(x["x"], y["x"]) and x["captions"] == y["captions"] for x, y in zip(a, b))
    assert generate_task(4, "audio_cap", "train", 4)[0]["captions"] != a[0]["captions"] or not torch.equal(
        generate_task(4, "audio_cap", "train", 4)[0]["x"], a[0]["x"])
    mel = log_mel(a[0]["x"])
    assert mel.shape[0] == 16 and torch.isfinite(mel).all()
    qa = generate_task(0, "image_qa", "train", 3)
    assert all(len(s["answers"]) == 10 for s in qa)
    assert all(len(s["answers"]) == 1 for s in generate_task(0, "video_qa", "train", 3))


def test_matrix_metrics() -> None:
    nan = float("nan")
    R = torch.tensor([[50.0, nan, nan], [30.0, 60.0, nan], [20.0, 40.0, 90.0]]).numpy()
    m = matrix_metrics(R)
    assert m["AP"] == pytest.approx(50.0) and m["last"] == 90.0
    assert m["forgetting"] == pytest.approx(((50 - 20) + (60 - 40)) / 2)


def test_params_validation_and_per_step_values() -> None:
    p = yaml.safe_load((ROOT / "params.yaml").read_text())
    validate(p, "params.yaml")
    hp = resolve(p, "moincl", "order2", 3)
    assert (hp["alpha_fusion"], hp["pseudo_num"], hp["lambda_kl"]) == (0.8, 2, 0.1)
    assert resolve(p, "moincl_released", "order1", 4)["as_released"] is True
    bad = copy.deepcopy(p)
    bad["micl"]["methods"]["moincl"]["alpha_fusion"]["order1"] = [0.5] * 3
    with pytest.raises(ConfigError, match="micl.methods.moincl.alpha_fusion"):
        validate(bad, "params.yaml")
    bad = copy.deepcopy(p)
    bad["micl"]["orders"]["order1"][0] = "smell_cap"
    with pytest.raises(ConfigError, match="micl.orders.order1"):
        validate(bad, "params.yaml")
    bad = copy.deepcopy(p)
    del bad["micl"]["methods"]["lwf"]["lambda_lwf"]
    with pytest.raises(ConfigError, match="micl.methods.lwf.lambda_lwf"):
        validate(bad, "params.yaml")


@pytest.mark.parametrize("kind,safe", [("gpt2", True), ("gpt2", False), ("llama", True)])
def test_any_causal_lm_loads_from_a_local_directory(tmp_path: Path, kind: str, safe: bool) -> None:
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    from cmml.families.micl.model import load_lm

    torch.manual_seed(0)
    tok = build_tokenizer(vocabulary())
    if kind == "gpt2":
        lm = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_positions=64, n_embd=16, n_layer=1, n_head=2))
    else:
        lm = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                          num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64))
    lm.save_pretrained(tmp_path, safe_serialization=safe)
    tok.save_pretrained(tmp_path)
    loaded, tok2 = load_lm(tmp_path)
    ids = torch.tensor([tok("a red disk", add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        assert torch.allclose(loaded(input_ids=ids).logits, lm.eval()(input_ids=ids).logits, atol=1e-6)
    m = MiclModel(Encoders(8), loaded, tok2, {"r": 2, "alpha": 4, "dropout": 0.0})
    adapted = {n.split(".")[-1] for n in lora_layers(m.lm)}
    assert adapted == ({"c_attn"} if kind == "gpt2" else {"q_proj", "v_proj"})
    ex = [prompt_example(s) for s in samples("audio_cap", 2, m)]
    assert len(m.generate(ex, CPU, {"num_beams": 2, "max_new_tokens": 3, "repetition_penalty": 1.0})) == 2


def test_load_lm_rejects_mismatched_weights(tmp_path: Path) -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    from cmml.errors import DataError
    from cmml.families.micl.model import load_lm

    tok = build_tokenizer(vocabulary())
    GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_positions=64, n_embd=16, n_layer=2, n_head=2)).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    conf = json.loads((tmp_path / "config.json").read_text())
    conf["n_layer"] = 1
    (tmp_path / "config.json").write_text(json.dumps(conf))
    with pytest.raises(DataError, match="unexpected"):
        load_lm(tmp_path)
    with pytest.raises(DataError, match="config.json"):
        load_lm(tmp_path / "nowhere")
