"""Fine-tuning LiteMedSAM's mask decoder: training on real wbc-seg masks lowers the loss, the checkpoint
round-trips into SamModel on top of the packaged encoder, and the shipped decoder segments real WBCs."""

import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def items(data_root):
    from bccdet.adapters.sam_tune import wbc_seg_items

    root = data_root / "wbc-seg"
    if not root.is_dir():
        pytest.skip(f"{root} absent")
    return wbc_seg_items(root, limit=3)


def test_decoder_finetune_learns_and_round_trips(items, tmp_path):
    import torch

    from bccdet.adapters import sam_tune as T
    from bccdet.adapters.sam import SamModel

    model = SamModel(threads=2)
    base = {k: v.clone() for k, v in model.net.mask_decoder.state_dict().items()}
    enc = {k: v.clone() for k, v in model.net.image_encoder.state_dict().items()}
    ex = T.build_examples(model, items, variants=2, mode="window", log=lambda m: None)
    assert ex["emb"].shape[:2] == (6, 256) and ex["gt"].shape == (6, 128, 128) and ex["gt"].any()
    hist = T.finetune(model, [ex], steps=50, batch=2, lr=3e-4, recipe={"jitter": 0.0, "exact_prob": 1.0},
                      log=lambda m: None)
    assert hist[-1]["loss"] < hist[0]["loss"]  # it fits the masks it is shown
    # only the decoder moved
    assert all(torch.equal(v, model.net.image_encoder.state_dict()[k]) for k, v in enc.items())
    assert any(not torch.equal(v, model.net.mask_decoder.state_dict()[k]) for k, v in base.items())

    path = T.save_decoder(model, tmp_path / "dec.pt", T.RECIPE, {"wbc-seg": 3})
    assert path.stat().st_size < 12 << 20  # a few MB, not the whole LiteMedSAM
    again = SamModel(path, threads=2)
    assert again.name == "dec" and again.model_type == "litemedsam"
    for k, v in model.net.mask_decoder.state_dict().items():
        assert torch.allclose(again.net.mask_decoder.state_dict()[k], v.half().float())
    T.reset_decoder(model)
    assert all(torch.equal(v, model.net.mask_decoder.state_dict()[k]) for k, v in base.items())


def test_decoder_checkpoint_for_another_litemedsam_is_refused(tmp_path):
    import torch

    from bccdet.adapters.sam import SamError, SamModel

    p = tmp_path / "other.pt"
    torch.save({"format": "bccdet-sam-decoder/1", "base_sha256": "0" * 64, "mask_decoder": {}}, p)
    with pytest.raises(SamError, match="decoder for LiteMedSAM"):
        SamModel(p)
