"""The open_clip encoder plugin: text at 32 tokens on a 77-token CLIP, weights from local
files, strict loads, and clear failures offline (no network is ever reached)."""

from __future__ import annotations

import torch
from safetensors.torch import save_file
import pytest

from diffret_cli.errors import CheckpointError, OfflineError, PluginError
from diffret_plugins.encoders.open_clip_encoder import OpenClipEncoder, WordTokenizer, tiny_config


def clip_vocab_tiny(**kw):
    cfg = tiny_config(vocab_size=49408, **kw)
    return OpenClipEncoder(model="custom", model_config=cfg, pretrained=None, tokenizer="clip").eval()


def test_32_tokens_on_a_77_token_clip_match_open_clip_eot_feature():
    """The sentence feature at max_words=32 equals open_clip's own 77-token encode_text
    (causal attention: the EOT token never sees what follows it)."""
    import open_clip

    torch.manual_seed(0)
    enc = clip_vocab_tiny()
    texts = ["a dog runs on the beach", "two people are cooking pasta in a kitchen"]
    ids, mask = enc.tokenize(texts, 32)
    assert ids.shape == (2, 32) and ids.dtype == torch.long
    assert (ids[:, 0] == 49406).all()  # SOT
    eot_pos = mask.sum(1) - 1
    assert (ids[torch.arange(2), eot_pos] == 49407).all() and (ids.argmax(1) == eot_pos).all()
    assert (ids[mask == 0] == 0).all()
    tokens, cls = enc.encode_text(ids, mask)
    assert tokens.shape == (2, 32, 64) and cls.shape == (2, 64)
    ref = enc.clip.encode_text.__func__  # open_clip's path needs its 77-wide causal mask
    enc.clip.attn_mask = enc.clip.build_attention_mask() if hasattr(enc.clip, "build_attention_mask") else \
        torch.full((77, 77), float("-inf")).triu_(1)
    with torch.no_grad():
        full = ref(enc.clip, open_clip.tokenize(texts))
    enc.clip.attn_mask = None
    torch.testing.assert_close(cls, full, rtol=1e-5, atol=1e-5)


def test_long_text_is_truncated_to_max_words_keeping_eot():
    enc = clip_vocab_tiny()
    ids, mask = enc.tokenize(["word " * 100], 32)
    assert mask.sum() == 32 and ids[0, -1] == 49407


def test_word_tokenizer_is_stable_and_eot_is_the_largest_id():
    tok = WordTokenizer(4096)
    a, b = tok.encode("A Red circle moves left"), tok.encode("a red CIRCLE moves left!")
    assert a == b and len(a) == 5 and all(1 <= i <= 4093 for i in a)
    assert tok.eot_token_id == 4095 and tok.sot_token_id == 4094


def test_clip_tokenizer_needs_the_clip_vocabulary():
    with pytest.raises(PluginError, match="49408"):
        OpenClipEncoder(model="custom", model_config=tiny_config(), pretrained=None, tokenizer="clip")


@pytest.mark.parametrize("fmt", ["pt", "safetensors"])
def test_weights_from_a_local_file_are_loaded_strictly(tmp_path, fmt):
    torch.manual_seed(1)
    src = OpenClipEncoder(model="custom", model_config=tiny_config(), pretrained=None)
    sd = {k: v.clone() for k, v in src.clip.state_dict().items()}
    path = tmp_path / f"w.{fmt}"
    if fmt == "pt":
        torch.save({"state_dict": {"module." + k: v for k, v in sd.items()}}, path)  # DDP-style file
    else:
        save_file(sd, str(path))
    torch.manual_seed(2)
    dst = OpenClipEncoder(model="custom", model_config=tiny_config(), pretrained=None, weights=str(path))
    for k, v in dst.clip.state_dict().items():
        assert torch.equal(v, sd[k]), k
    assert dst.config()["weights"] == str(path)


def test_weights_of_another_architecture_fail_with_the_keys(tmp_path):
    other = OpenClipEncoder(model="custom", model_config=tiny_config(layers=1), pretrained=None)
    path = tmp_path / "w.safetensors"
    save_file(dict(other.clip.state_dict()), str(path))
    with pytest.raises(CheckpointError, match=r"missing \['transformer.resblocks.1"):
        OpenClipEncoder(model="custom", model_config=tiny_config(layers=2), pretrained=None, weights=str(path))
    with pytest.raises(CheckpointError, match="not found"):
        OpenClipEncoder(model="custom", model_config=tiny_config(), pretrained=None, weights=str(tmp_path / "nope.pt"))


def test_unknown_model_and_tag_list_what_exists():
    with pytest.raises(PluginError, match="open_clip.list_models"):
        OpenClipEncoder(model="ViT-Q-99", pretrained=None)
    with pytest.raises(PluginError, match="available: .*openai"):
        OpenClipEncoder(model="ViT-B-32-quickgelu", pretrained="no-such-tag")


def test_pretrained_tag_offline_fails_at_once_with_the_fix(tmp_path, monkeypatch):
    """The real download path: the Hugging Face endpoint is a closed port on 127.0.0.1."""
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_ETAG_TIMEOUT", "2")
    monkeypatch.setenv("HF_HUB_DOWNLOAD_TIMEOUT", "2")
    with pytest.raises(OfflineError) as err:
        OpenClipEncoder(model="ViT-B-32-quickgelu", pretrained="openai", cache_dir=str(tmp_path / "cache"))
    msg = str(err.value)
    assert "ViT-B-32-quickgelu/openai" in msg and "weights=" in msg and "HF_HUB_OFFLINE" in msg


def test_patch_embedding_is_frozen_and_logit_scale_clamped():
    enc = OpenClipEncoder(model="custom", model_config=tiny_config(), pretrained=None)
    assert not enc.clip.visual.conv1.weight.requires_grad
    assert enc.clip.visual.conv1.weight in [p for p in enc.parameter_groups()["frozen"]]
    with torch.no_grad():
        enc.clip.logit_scale.fill_(10.0)  # exp(10) >> 100
    assert enc.logit_scale().item() == 100.0


def test_weights_from_a_torchscript_archive_like_openais(tmp_path):
    """OpenAI ships ViT-B-32.pt as a TorchScript archive: its state dict is read (float32,
    metadata and mask buffers dropped) and loaded strictly."""
    import warnings

    torch.manual_seed(3)
    src = OpenClipEncoder(model="custom", model_config=tiny_config(), pretrained=None).clip
    src.attn_mask = torch.full((77, 77), float("-inf")).triu_(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.script(src).save(str(tmp_path / "ViT-tiny.pt"))
        dst = OpenClipEncoder(model="custom", model_config=tiny_config(), pretrained=None,
                              weights=str(tmp_path / "ViT-tiny.pt"))
    for k, v in dst.clip.state_dict().items():
        assert torch.equal(v, src.state_dict()[k]), k


def test_an_official_vit_b32_checkpoint_is_recognised_by_its_shapes():
    """`diffret convert` names the real architecture (ViT-B-32-quickgelu) for a full-size
    official best.pth; shapes only, so meta tensors stand in for 150M parameters."""
    import open_clip

    from diffret_cli.convert import infer_config

    with torch.device("meta"):
        clip = open_clip.create_model("ViT-B-32-quickgelu", pretrained=None, device="meta")
    sd = {"clip." + k: v for k, v in clip.state_dict().items()}
    for i in range(4):
        for k, v in clip.transformer.resblocks[i].state_dict().items():
            sd[f"transformerClip.resblocks.{i}.{k}"] = v
    cfg = infer_config(sd)
    assert cfg["encoder"]["args"] == {"model": "ViT-B-32-quickgelu", "pretrained": None}
    assert cfg["temporal"]["layers"] == 4


@pytest.mark.parametrize("heads", [1, 4])
def test_text_attention_heads_are_the_text_layers_heads(heads):
    """What DiffusionRet's temporal transformer needs to take a text layer's weights
    (section 3.2), read from the encoder interface instead of open_clip's internals."""
    enc = OpenClipEncoder(model="custom", model_config=tiny_config(heads=heads), pretrained=None)
    assert enc.text_attention_heads() == heads
    assert all(b.attn.num_heads == heads for b in enc.clip.transformer.resblocks)
    # the per-sample text mask is built for that many heads (a wrong count fails here)
    tokens, cls = enc.encode_text(*enc.tokenize(["a b c", "d"], 8))
    assert tokens.shape == (2, 8, 64) and cls.shape == (2, 64)


@pytest.mark.parametrize("freeze", [True, False])
def test_parameter_groups_follow_the_config_not_requires_grad(freeze):
    """The optimiser's groups: only the patch conv is frozen (official), and only when
    freeze_patch_embed; toggling requires_grad on the whole encoder (stage 2 freezes it,
    a resumed stage 1 unfreezes it) changes nothing."""
    enc = OpenClipEncoder(model="custom", model_config=tiny_config(), pretrained=None, freeze_patch_embed=freeze)
    conv = enc.clip.visual.conv1.weight
    expected_frozen = [id(conv)] if freeze else []
    for toggle in (None, False, True):
        if toggle is not None:
            enc.requires_grad_(toggle)
        groups = enc.parameter_groups()
        assert [id(p) for p in groups["frozen"]] == expected_frozen
        trained = {id(p) for p in groups["pretrained"]}
        assert id(enc.clip.logit_scale) in trained and id(enc.clip.token_embedding.weight) in trained
        assert len(trained) + len(expected_frozen) == len(list(enc.parameters()))
