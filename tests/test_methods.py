"""The method registry and what each method trains (heads, clips, losses)."""

import pytest
import torch

from clap_bench.config import ContrastiveConfig, EncoderConfig
from clap_bench.encoders import build_video_encoder
from clap_bench.methods import PretrainModel, compute_losses, create_method, list_methods

SEVEN = ["clap", "clap-clip", "clap-dagger", "clap-mask", "clap-no-cls", "tac", "tsp"]


def test_registry_lists_the_seven_methods_and_the_none_baseline_with_wildcards():
    assert list_methods() == sorted(SEVEN + ["none"])
    assert not create_method("none").trains and all(create_method(m).trains for m in SEVEN)
    assert list_methods("clap*") == ["clap", "clap-clip", "clap-dagger", "clap-mask", "clap-no-cls"]
    with pytest.raises(KeyError, match="known: clap"):
        create_method("nope")


def test_create_method_drops_none_and_rejects_unknown_keys():
    assert create_method("clap", contrastive=None).contrastive == "mask"  # None: not given
    assert create_method("clap", contrastive="clip").contrastive == "clip"
    with pytest.raises(ValueError, match="bogus"):
        create_method("tac", bogus=1)
    with pytest.raises(ValueError, match="region head needs background"):
        create_method("tac", region_head=True)


def test_a_null_in_the_profiles_method_section_is_a_value_not_a_missing_key():
    # contrastive: null turns CLAP's contrastive term off (create_method's None means "not given");
    # a field that takes no null says so instead of being silently left at its default.
    from clap_bench.config import ConfigError, load_profile
    from clap_bench.methods import method_from_profile

    profile = load_profile("smoke", overrides={"methods": {"clap": {"contrastive": None}}})
    assert method_from_profile("clap", profile.methods).contrastive is None
    assert method_from_profile("clap", {}).contrastive == "mask"
    with pytest.raises(ValueError, match="needs at least one head or a contrastive loss"):
        method_from_profile("clap-clip", {"clap-clip": {"contrastive": None, "class_head": False, "region_head": False}})
    with pytest.raises(ConfigError, match=r"methods\.clap\.class_weight: expected a number, got None"):
        method_from_profile("clap", {"clap": {"class_weight": None}})


@pytest.mark.parametrize(
    "name, regions, heads, loss_terms, captions, bg_prompts",
    [
        ("tac", "foreground", {"class_head"}, {"class_ce"}, False, False),
        ("tsp", "all", {"class_head", "region_head"}, {"class_ce", "region_ce"}, False, False),
        ("clap-clip", "all", {"class_head", "region_head", "video_proj", "text_proj"}, {"class_ce", "region_ce", "contrastive"}, False, False),
        ("clap-mask", "all", {"class_head", "region_head", "video_proj", "text_proj"}, {"class_ce", "region_ce", "contrastive"}, False, False),
        ("clap", "all", {"class_head", "region_head", "video_proj", "text_proj"}, {"class_ce", "region_ce", "contrastive"}, True, False),
        ("clap-no-cls", "all", {"video_proj", "text_proj"}, {"contrastive"}, True, False),
        ("clap-dagger", "all", {"class_head", "region_head", "video_proj", "text_proj"}, {"class_ce", "region_ce", "contrastive"}, True, True),
    ],
)
def test_each_method_builds_its_heads_and_losses(name, regions, heads, loss_terms, captions, bg_prompts):
    torch.manual_seed(0)
    method = create_method(name)
    assert (method.regions, method.use_captions, method.background_prompts_only) == (regions, captions, bg_prompts)
    encoder = build_video_encoder(EncoderConfig(arch="r2plus1d_tiny", width=0.125))
    model = PretrainModel(encoder, method, num_classes=4, text_dim=6, gvf_dim=encoder.out_dim, embed_dim=8)
    assert {n for n, _ in model.named_children()} - {"backbone"} == heads
    n = 6
    clips = torch.randn(n, 3, 4, 28, 28)
    region = torch.tensor([1, 1, 1, 0, 0, 1])
    label = torch.tensor([0, 0, 2, -1, -1, 3])
    texts = ["foreground of a"] * 2 + ["foreground of c", "background of a", "background of a", "a caption"]
    out = model(clips, torch.randn(n, 6), torch.randn(n, encoder.out_dim))
    losses = compute_losses(model, out, {"label": label, "region": region, "texts": texts})
    assert set(losses) >= loss_terms | {"loss"}
    expected_total = sum(losses[k] for k in loss_terms)
    assert losses["loss"].item() == pytest.approx(expected_total.item(), rel=1e-6)
    losses["loss"].backward()
    assert encoder.body.stem[0].weight.grad.abs().sum() > 0


def test_tsp_region_head_sees_the_global_video_feature():
    torch.manual_seed(0)
    method = create_method("tsp")
    encoder = build_video_encoder(EncoderConfig(arch="r2plus1d_tiny", width=0.125))
    model = PretrainModel(encoder, method, num_classes=3, gvf_dim=10).eval()
    assert model.region_head.in_features == encoder.out_dim + 10
    clips = torch.randn(2, 3, 4, 28, 28)
    a = model(clips, gvf=torch.zeros(2, 10))["region_logits"]
    b = model(clips, gvf=torch.ones(2, 10))["region_logits"]
    assert not torch.allclose(a, b)
    with pytest.raises(ValueError, match="gvf_dim"):
        PretrainModel(encoder, method, num_classes=3)


def test_masked_and_clip_variants_differ_only_in_background_terms():
    torch.manual_seed(1)
    encoder = build_video_encoder(EncoderConfig(arch="r2plus1d_tiny", width=0.125))
    clip_m = PretrainModel(encoder, create_method("clap-clip"), num_classes=2, text_dim=4, embed_dim=8)
    mask_m = PretrainModel(encoder, create_method("clap-mask"), num_classes=2, text_dim=4, embed_dim=8)
    mask_m.load_state_dict(clip_m.state_dict())
    clips, text = torch.randn(4, 3, 4, 28, 28), torch.randn(4, 4)
    batch_all_fg = {"label": torch.tensor([0, 1, 0, 1]), "region": torch.ones(4, dtype=torch.long), "texts": ["a", "b", "c", "d"]}
    lc = compute_losses(clip_m, clip_m(clips, text), batch_all_fg)["contrastive"]
    lm = compute_losses(mask_m, mask_m(clips, text), batch_all_fg)["contrastive"]
    assert lc.item() == pytest.approx(lm.item(), rel=1e-6)  # no background: Eq. 5 == Eq. 3
    batch_bg = dict(batch_all_fg, region=torch.tensor([1, 0, 1, 0]), label=torch.tensor([0, -1, 0, -1]))
    lc = compute_losses(clip_m, clip_m(clips, text), batch_bg)["contrastive"]
    lm = compute_losses(mask_m, mask_m(clips, text), batch_bg)["contrastive"]
    assert lc.item() != pytest.approx(lm.item())


def test_learnable_temperature_is_a_parameter_and_fixed_is_not():
    encoder = build_video_encoder(EncoderConfig(arch="r2plus1d_tiny", width=0.125))
    fixed = PretrainModel(encoder, create_method("clap"), 2, text_dim=4, contrastive=ContrastiveConfig(temperature=0.1))
    learned = PretrainModel(
        encoder, create_method("clap"), 2, text_dim=4, contrastive=ContrastiveConfig(temperature=0.1, learn_temperature=True)
    )
    assert "log_logit_scale" not in dict(fixed.named_parameters())
    assert "log_logit_scale" in dict(learned.named_parameters())
    assert (1 / fixed.logit_scale()).item() == pytest.approx(0.1)


def test_missing_kinetics_weights_name_the_file_and_the_url(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(FileNotFoundError) as err:
        build_video_encoder(EncoderConfig(arch="r2plus1d_18", weights="kinetics400"))
    msg = str(err.value)
    assert str(tmp_path / "hub" / "checkpoints" / "r2plus1d_18-91a641e6.pth") in msg
    assert "https://download.pytorch.org/models/r2plus1d_18-91a641e6.pth" in msg


def test_harness_checkpoint_backbone_loads_into_a_fresh_encoder(tmp_path):
    torch.manual_seed(0)
    encoder = build_video_encoder(EncoderConfig(arch="r2plus1d_tiny", width=0.125))
    model = PretrainModel(encoder, create_method("tac"), 3)
    torch.save({"format": "clap_bench.pretrain/1", "model": model.state_dict()}, tmp_path / "c.pt")
    fresh = build_video_encoder(EncoderConfig(arch="r2plus1d_tiny", width=0.125), weights=tmp_path / "c.pt")
    for (k, a), (_, b) in zip(encoder.state_dict().items(), fresh.state_dict().items()):
        assert torch.equal(a, b), k
    with pytest.raises(ValueError, match="shapes do not match"):
        build_video_encoder(EncoderConfig(arch="r2plus1d_tiny", width=0.25), weights=tmp_path / "c.pt")


def test_fixed_temperature_below_001_is_used_as_given_and_learned_one_is_bounded():
    import math

    from clap_bench.config import ConfigError

    encoder = build_video_encoder(EncoderConfig(arch="r2plus1d_tiny", width=0.125))
    fixed = PretrainModel(encoder, create_method("clap"), 2, text_dim=4, contrastive=ContrastiveConfig(temperature=0.005))
    assert fixed.logit_scale().item() == pytest.approx(200.0)  # 1 / 0.005, not clamped to 100
    paper = PretrainModel(encoder, create_method("clap"), 2, text_dim=4, contrastive=ContrastiveConfig(temperature=0.07))
    assert torch.equal(paper.logit_scale(), paper.log_logit_scale.exp())
    learned = PretrainModel(
        encoder, create_method("clap"), 2, text_dim=4, contrastive=ContrastiveConfig(temperature=0.01, learn_temperature=True)
    )
    with torch.no_grad():
        learned.log_logit_scale.fill_(math.log(1000.0))  # where a step could push it
    learned.clamp_logit_scale_()  # what the trainer does after each step
    assert learned.logit_scale().item() == pytest.approx(100.0)
    paper.clamp_logit_scale_()  # a fixed temperature is left as it is
    assert paper.logit_scale().item() == pytest.approx(1 / 0.07)
    with pytest.raises(ConfigError, match="learn_temperature: false"):
        ContrastiveConfig(temperature=0.005, learn_temperature=True)


def test_a_learned_logit_scale_past_the_bound_still_gets_a_gradient():
    # CLIP clamps the parameter after each step; a clamp in the forward pass would zero the gradient
    # above the bound, so nothing could lower the scale again.
    import math

    encoder = build_video_encoder(EncoderConfig(arch="r2plus1d_tiny", width=0.125))
    learned = PretrainModel(
        encoder, create_method("clap"), 2, text_dim=4, contrastive=ContrastiveConfig(temperature=0.01, learn_temperature=True)
    )
    with torch.no_grad():
        learned.log_logit_scale.fill_(math.log(100.0) + 0.01)
    learned.logit_scale().backward()
    assert learned.log_logit_scale.grad is not None and learned.log_logit_scale.grad.abs().item() > 0
