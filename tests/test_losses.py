"""Eq. 3/4 and Eq. 5 against plainly written per-row references, and the distributed gather."""

import math
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F

from clap_bench.methods.losses import contrastive_loss, masked_cross_entropy


def _reference(z_v, z_t, texts, tau, foreground=None):
    """Per pair, per direction, with Python loops: -log exp(s_pos) / sum over allowed columns.

    Allowed columns of pair i: every pair j whose text differs from pair i's, and i itself.
    Terms are kept for every pair (Eq. 3) or only foreground pairs (Eq. 5); each direction is
    divided by the number of kept terms.
    """
    n = len(texts)
    zv = [v / v.norm() for v in z_v]
    zt = [t / t.norm() for t in z_t]
    keep = [True] * n if foreground is None else [bool(f) for f in foreground]
    v2t_sum, t2v_sum = 0.0, 0.0
    for i in range(n):
        if not keep[i]:
            continue
        allowed = [j for j in range(n) if j == i or texts[j] != texts[i]]
        num = math.exp(float(zv[i] @ zt[i]) / tau)
        den = sum(math.exp(float(zv[i] @ zt[j]) / tau) for j in allowed)
        v2t_sum += -math.log(num / den)
        num = math.exp(float(zt[i] @ zv[i]) / tau)
        den = sum(math.exp(float(zt[i] @ zv[j]) / tau) for j in allowed)
        t2v_sum += -math.log(num / den)
    k = max(1, sum(keep))
    return v2t_sum / k, t2v_sum / k


def _ids(texts):
    table = {t: i for i, t in enumerate(dict.fromkeys(texts))}
    return torch.tensor([table[t] for t in texts])


@pytest.mark.parametrize("seed", [0, 1])
def test_clip_loss_matches_reference_with_distinct_texts(seed):
    g = torch.Generator().manual_seed(seed)
    n, e, tau = 7, 5, 0.1
    z_v, z_t = torch.randn(n, e, generator=g), torch.randn(n, e, generator=g)
    texts = [f"text {i}" for i in range(n)]
    out = contrastive_loss(z_v, z_t, _ids(texts), 1 / tau)
    ref_v2t, ref_t2v = _reference(z_v, z_t, texts, tau)
    assert out["v2t"].item() == pytest.approx(ref_v2t, rel=1e-5)
    assert out["t2v"].item() == pytest.approx(ref_t2v, rel=1e-5)
    assert out["loss"].item() == pytest.approx(ref_v2t + ref_t2v, rel=1e-5)
    # With distinct texts this is the textbook symmetric InfoNCE.
    zn_v, zn_t = F.normalize(z_v, dim=1), F.normalize(z_t, dim=1)
    logits = zn_v @ zn_t.T / tau
    plain = F.cross_entropy(logits, torch.arange(n)) + F.cross_entropy(logits.T, torch.arange(n))
    assert out["loss"].item() == pytest.approx(plain.item(), rel=1e-5)


def test_clip_loss_with_repeated_texts_matches_reference():
    g = torch.Generator().manual_seed(3)
    texts = ["fg of a"] * 3 + ["bg of a"] * 2 + ["fg of b", "a caption", "fg of a"]
    n = len(texts)
    z_v, z_t = torch.randn(n, 6, generator=g), torch.randn(n, 6, generator=g)
    out = contrastive_loss(z_v, z_t, _ids(texts), 1 / 0.07)
    ref = _reference(z_v, z_t, texts, 0.07)
    assert (out["v2t"].item(), out["t2v"].item()) == pytest.approx(ref, rel=1e-5)


def test_masked_loss_matches_reference_and_ignores_background_positives():
    g = torch.Generator().manual_seed(4)
    texts = ["fg of a"] * 2 + ["bg of a"] * 3 + ["fg of b", "cap 1", "cap 2", "bg of b"]
    fg = torch.tensor([1, 1, 0, 0, 0, 1, 1, 1, 0], dtype=torch.bool)
    n = len(texts)
    z_v, z_t = torch.randn(n, 8, generator=g), torch.randn(n, 8, generator=g)
    out = contrastive_loss(z_v, z_t, _ids(texts), 1 / 0.2, foreground=fg)
    ref = _reference(z_v, z_t, texts, 0.2, foreground=fg)
    assert (out["v2t"].item(), out["t2v"].item()) == pytest.approx(ref, rel=1e-5)
    # A background text has no positive term of its own but stays a negative of foreground clips:
    # moving it changes the loss (and still matches the reference).
    z_t2 = z_t.clone()
    z_t2[2] = z_v[2] * 3
    base = out["loss"].item()
    bg_only = contrastive_loss(z_v, z_t2, _ids(texts), 5.0, foreground=fg)["loss"].item()
    assert bg_only != pytest.approx(base)  # z_t[2] is a negative of foreground clips
    ref2 = sum(_reference(z_v, z_t2, texts, 0.2, foreground=fg))
    assert bg_only == pytest.approx(ref2, rel=1e-5)


def test_masked_loss_keeps_background_clips_as_negatives():
    g = torch.Generator().manual_seed(5)
    texts = ["fg of a", "bg of a", "bg of b"]
    fg = torch.tensor([True, False, False])
    z_v = torch.randn(3, 4, generator=g, requires_grad=True)
    z_t = torch.randn(3, 4, generator=g, requires_grad=True)
    contrastive_loss(z_v, z_t, _ids(texts), 10.0, foreground=fg)["loss"].backward()
    # Background clip 1 has no term of its own; it still gets a gradient as a negative of text 0.
    assert z_v.grad[1].abs().sum() > 0
    full = contrastive_loss(z_v.detach(), z_t.detach(), _ids(texts), 10.0)["loss"]
    masked = contrastive_loss(z_v.detach(), z_t.detach(), _ids(texts), 10.0, foreground=fg)["loss"]
    assert full.item() != pytest.approx(masked.item())


def test_masked_cross_entropy_uses_kept_rows_only():
    logits = torch.tensor([[2.0, 0.0], [0.0, 2.0], [5.0, -5.0]])
    target = torch.tensor([0, 0, 1])
    keep = torch.tensor([True, True, False])
    expected = (-math.log(math.exp(2) / (math.exp(2) + 1)) - math.log(1 / (1 + math.exp(2)))) / 2
    assert masked_cross_entropy(logits, target, keep).item() == pytest.approx(expected, rel=1e-6)
    none = masked_cross_entropy(logits, target, torch.zeros(3, dtype=torch.bool))
    assert none.item() == 0.0


# ---------------------------------------------------------------- reduction: mean (ours) or sum (Eq. 3/5 as written)
# Three pairs, tau = 1, plain dot products, distinct texts. v2t logits z_v @ z_t.T: [1, 0, 0], [0, 2, 1], [1, 2, 1];
# t2v logits z_t @ z_v.T: [1, 0, 1], [0, 2, 2], [0, 1, 1]. Each term: log(sum exp(row)) - row[own].
HAND_Z_V = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
HAND_Z_T = torch.tensor([[1.0, 0.0], [0.0, 2.0], [0.0, 1.0]])
E = math.e
HAND_V2T = [math.log(E + 2) - 1, math.log(1 + E**2 + E) - 2, math.log(2 * E + E**2) - 1]
HAND_T2V = [math.log(2 * E + 1) - 1, math.log(1 + 2 * E**2) - 2, math.log(1 + 2 * E) - 1]


@pytest.mark.parametrize("foreground", [None, [True, False, True]], ids=["eq3", "eq5"])
def test_sum_reduction_is_the_papers_sum_and_mean_times_the_number_of_terms(foreground):
    keep = [True] * 3 if foreground is None else foreground
    v2t_sum = sum(t for t, k in zip(HAND_V2T, keep) if k)
    t2v_sum = sum(t for t, k in zip(HAND_T2V, keep) if k)
    terms = sum(keep)  # per direction: 3 pairs (Eq. 3), 2 foreground pairs (Eq. 5)
    fg = None if foreground is None else torch.tensor(foreground)
    form = dict(foreground=fg, normalize=False, duplicate_texts="negatives")
    ids = _ids(["a", "b", "c"])
    mean = contrastive_loss(HAND_Z_V, HAND_Z_T, ids, 1.0, **form)
    summed = contrastive_loss(HAND_Z_V, HAND_Z_T, ids, 1.0, reduction="sum", **form)
    assert summed["v2t"].item() == pytest.approx(v2t_sum, rel=1e-6)
    assert summed["t2v"].item() == pytest.approx(t2v_sum, rel=1e-6)
    assert mean["loss"].item() == pytest.approx((v2t_sum + t2v_sum) / terms, rel=1e-6)
    assert summed["loss"].item() == pytest.approx(mean["loss"].item() * terms, rel=1e-6)
    with pytest.raises(ValueError, match="reduction: expected one of"):
        contrastive_loss(HAND_Z_V, HAND_Z_T, ids, 1.0, reduction="total")


def test_contrastive_reduction_reaches_the_loss_through_the_methods_config():
    from clap_bench.config import ContrastiveConfig, EncoderConfig, load_profile
    from clap_bench.encoders import build_video_encoder
    from clap_bench.methods import PretrainModel, compute_losses, create_method, method_from_profile

    profile = load_profile("smoke", overrides={"methods": {"clap": {"contrastive_reduction": "sum"}}})
    summed = method_from_profile("clap", profile.methods)
    averaged = method_from_profile("clap", load_profile("smoke").methods)
    assert (summed.contrastive_reduction, averaged.contrastive_reduction) == ("sum", "mean")
    assert "contrastive_reduction" not in averaged.to_dict()  # at its default the key stays out of identities
    encoder = build_video_encoder(EncoderConfig(arch="r2plus1d_tiny", width=0.125))
    form = ContrastiveConfig(normalize=False, temperature=1.0, duplicate_texts="negatives")
    batch = {"label": torch.tensor([0, -1, 1]), "region": torch.tensor([1, 0, 1]), "texts": ["a", "b", "c"],
             "video_ids": ["v0", "v0", "v1"]}
    out = {"z_v": HAND_Z_V, "z_t": HAND_Z_T, "class_logits": torch.zeros(3, 2), "region_logits": torch.zeros(3, 2)}
    losses = {}
    for method in (summed, averaged):
        model = PretrainModel(encoder, method, num_classes=2, text_dim=4, embed_dim=2, contrastive=form)
        losses[method.contrastive_reduction] = compute_losses(model, out, batch)
    # clap's masked Eq. 5 on foreground pairs 0 and 2
    assert losses["sum"]["contrastive"].item() == pytest.approx(HAND_V2T[0] + HAND_V2T[2] + HAND_T2V[0] + HAND_T2V[2], rel=1e-6)
    assert losses["sum"]["contrastive"].item() == pytest.approx(2 * losses["mean"]["contrastive"].item(), rel=1e-6)
    assert losses["sum"]["class_ce"].item() == losses["mean"]["class_ce"].item()  # L_ce stays averaged
    with pytest.raises(ValueError, match="methods.tac.contrastive_reduction: 'sum' needs a contrastive term"):
        create_method("tac", contrastive_reduction="sum")
    with pytest.raises(ValueError, match=r"methods.clap.contrastive_reduction: expected one of \('mean', 'sum'\)"):
        create_method("clap", contrastive_reduction="total")


# ---------------------------------------------------------------- distributed (2 CPU processes, gloo)
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world, port, data, masked, result_dir, reduction="mean"):
    import torch.distributed as dist

    from clap_bench.methods.losses import contrastive_loss as loss_fn
    from clap_bench.training.distributed import gather_no_grad, gather_with_grad

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    z_v_all, z_t_all, ids_all, fg_all, split = data
    lo, hi = split[rank], split[rank + 1]
    z_v = z_v_all[lo:hi].clone().requires_grad_(True)
    z_t = z_t_all[lo:hi].clone().requires_grad_(True)
    gv, gt = gather_with_grad(z_v), gather_with_grad(z_t)
    ids = gather_no_grad(ids_all[lo:hi])
    fg = gather_no_grad(fg_all[lo:hi].to(torch.uint8)).bool()
    rows = torch.arange(lo, hi)
    out = loss_fn(gv, gt, ids, 1 / 0.1, foreground=fg if masked else None, rows=rows, world_size=world, reduction=reduction)
    out["loss"].backward()
    # Data-parallel training averages gradients over processes; so do we.
    grads = torch.cat([z_v.grad, z_t.grad], dim=1)
    logged = out["loss"].detach().clone()
    dist.all_reduce(logged)
    torch.save({"grad": grads, "loss": logged / world}, os.path.join(result_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


@pytest.mark.parametrize("masked, reduction", [(False, "mean"), pytest.param(True, "mean", marks=pytest.mark.slow),
                                               (True, "sum")])
def test_gathered_loss_and_gradients_equal_single_process(tmp_path, masked, reduction):
    g = torch.Generator().manual_seed(7)
    n = 9  # uneven split: 5 + 4 rows
    z_v, z_t = torch.randn(n, 6, generator=g), torch.randn(n, 6, generator=g)
    texts = ["a", "a", "b", "c", "a", "d", "b", "e", "f"]
    ids = _ids(texts)
    fg = torch.tensor([1, 1, 0, 1, 0, 1, 0, 1, 1], dtype=torch.bool)
    split = [0, 5, 9]
    mp.spawn(_worker, args=(2, _free_port(), (z_v, z_t, ids, fg, split), masked, str(tmp_path), reduction), nprocs=2, join=True)

    zv, zt = z_v.clone().requires_grad_(True), z_t.clone().requires_grad_(True)
    single = contrastive_loss(zv, zt, ids, 1 / 0.1, foreground=fg if masked else None, reduction=reduction)
    single["loss"].backward()
    expected_grad = torch.cat([zv.grad, zt.grad], dim=1)
    results = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    for r, res in enumerate(results):
        assert res["loss"].item() == pytest.approx(single["loss"].item(), rel=1e-5)
        # Each process's gradient (after the 1/world averaging DDP applies) equals its rows' share.
        averaged = res["grad"] / 2
        torch.testing.assert_close(averaged, expected_grad[split[r] : split[r + 1]], rtol=1e-4, atol=1e-6)
