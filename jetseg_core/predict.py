"""jetseg-predict: segment an image, a folder of images or a video and write the results.

For every image: <name>_labels.png (class ids, one byte per pixel), <name>_color.png (class
colours) and <name>_overlay.png (colours blended over the photo). For a video: <name>_color.mp4
and <name>_overlay.mp4 (read and written with OpenCV), plus per-frame label PNGs with --video-labels.
"""
from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from .backends import BACKENDS
from .cli import OneLineParser, UsageError, positive_int, usage_error
from .rgb import pil_to_rgb

IMAGE_SUFFIXES = {'.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff', '.webp', '.ppm', '.pgm'}
VIDEO_SUFFIXES = {'.mp4', '.avi', '.mov', '.mkv', '.webm', '.m4v', '.mpg', '.mpeg'}
OUTPUTS = ('labels', 'color', 'overlay')


SHEET_ROWS = 6  # images on a --contact-sheet


def build_parser() -> OneLineParser:
    p = OneLineParser(prog='jetseg-predict', description=__doc__.splitlines()[0],
                      formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument('inputs', nargs='+', type=Path, help='image files, folders of images or video files')
    p.add_argument('-o', '--output', type=Path, default=Path('predictions'), help='output directory')
    p.add_argument('--checkpoint', default='',
                   help="checkpoint file; empty: the shipped weights of --profile for real pictures "
                        "(CamVid where shipped); 'camvid', 'synthetic': those shipped weights; "
                        "'untrained': random init")
    p.add_argument('--profile', default='nano')
    p.add_argument('--device', default='auto')
    p.add_argument('--backend', default='auto', choices=BACKENDS,
                   help='what runs the network; auto: TensorRT, else torch on CUDA; OpenVINO, else '
                        'ONNX Runtime, else torch on CPU')
    p.add_argument('--precision', default='auto', help="fp32, fp16 (CUDA only) or auto (fp16 on CUDA)")
    p.add_argument('--threads', type=positive_int, default=None,
                   help="CPU threads; default: the profile's best (nano: 1 on CPU, else one per core)")
    p.add_argument('--alpha', type=float, default=0.5, help='overlay opacity of the class colours (0..1)')
    p.add_argument('--outputs', default='labels,color,overlay',
                   help='comma-separated subset of labels,color,overlay')
    p.add_argument('--max-frames', type=positive_int, default=None, help='video: stop after N frames')
    p.add_argument('--video-labels', action='store_true', help='video: also write a label PNG per frame')
    p.add_argument('--contact-sheet', type=Path, default=None, metavar='PNG',
                   help=f'also write input | colour mask | overlay of the first {SHEET_ROWS} images, '
                        'with the class legend, to this PNG')
    return p


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def collect_inputs(paths: Sequence[Path]) -> list[tuple[str, Path]]:
    """('image' | 'video', path) for every input; folders expand to their images (sorted)."""
    items: list[tuple[str, Path]] = []
    for path in paths:
        if path.is_dir():
            found = _images_in(path)
            if not found:
                raise UsageError(f'{path}: folder has no images ({", ".join(sorted(IMAGE_SUFFIXES))})')
            items += [('image', f) for f in found]
        elif path.is_file():
            suffix = path.suffix.lower()
            if suffix in VIDEO_SUFFIXES:
                items.append(('video', path))
            elif suffix in IMAGE_SUFFIXES:
                items.append(('image', path))
            else:
                raise UsageError(f'{path}: not an image or video file (by extension)')
        else:
            raise UsageError(f'{path}: no such file or folder')
    return items


def read_image(path: Path) -> np.ndarray:
    """HxWx3 uint8 RGB; ValueError with the file name when it cannot be decoded."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return np.array(pil_to_rgb(im))
    except (UnidentifiedImageError, OSError) as exc:
        raise ValueError(f'{path}: cannot read image ({exc})') from None


def write_png(array: np.ndarray, path: Path) -> None:
    from PIL import Image

    Image.fromarray(array).save(path)


def video_frames(path: Path, max_frames: int | None) -> Iterator[np.ndarray]:
    import cv2

    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise ValueError(f'{path}: cannot open video')
    try:
        n = 0
        while max_frames is None or n < max_frames:
            ok, bgr = cap.read()
            if not ok:
                break
            n += 1
            yield cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    finally:
        cap.release()


def _video_fps(path: Path) -> float:
    import cv2

    cap = cv2.VideoCapture(str(path))
    fps = cap.get(cv2.CAP_PROP_FPS) if cap.isOpened() else 0.0
    cap.release()
    return fps if fps and np.isfinite(fps) and fps > 0 else 30.0


class Predictor:
    """Runs a Segmenter and writes the requested outputs for images and videos."""

    def __init__(self, segmenter, out_dir: Path, outputs: set[str], alpha: float,
                 sheet_rows: int = 0) -> None:
        self.seg = segmenter
        self.out_dir = out_dir
        self.outputs = outputs
        self.alpha = alpha
        self.frames = 0
        self.infer_ms = 0.0
        self.sheet_rows = sheet_rows
        self.sheet: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # input, colour mask, overlay

    def _render(self, rgb: np.ndarray, for_sheet: bool = False
                ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        from .visualize import blend, colorize

        result = self.seg.segment(rgb)
        self.frames += 1
        self.infer_ms += result.preprocess_ms + result.inference_ms + result.postprocess_ms
        labels = result.labels
        wanted = self.outputs | ({'color', 'overlay'} if for_sheet else set())
        color = colorize(labels, self.seg.palette) if wanted & {'color', 'overlay'} else None
        overlay = blend(rgb, color, self.alpha) if 'overlay' in wanted else None
        if for_sheet:
            self.sheet.append((rgb, color, overlay))
        return labels, color, overlay

    def image(self, path: Path, stem: str) -> list[Path]:
        labels, color, overlay = self._render(read_image(path), len(self.sheet) < self.sheet_rows)
        written = []
        for kind, array in (('labels', labels), ('color', color), ('overlay', overlay)):
            if kind in self.outputs and array is not None:
                target = self.out_dir / f'{stem}_{kind}.png'
                write_png(array, target)
                written.append(target)
        return written

    def video(self, path: Path, stem: str, max_frames: int | None, frame_labels: bool) -> list[Path]:
        import cv2

        fps = _video_fps(path)
        writers: dict[str, cv2.VideoWriter] = {}
        written: list[Path] = []
        labels_dir = self.out_dir / f'{stem}_labels'
        try:
            for i, rgb in enumerate(video_frames(path, max_frames)):
                labels, color, overlay = self._render(rgb)
                if frame_labels or ('labels' in self.outputs and not ({'color', 'overlay'} & self.outputs)):
                    labels_dir.mkdir(exist_ok=True)
                    write_png(labels, labels_dir / f'{i:06d}.png')
                for kind, array in (('color', color), ('overlay', overlay)):
                    if array is None:
                        continue
                    if kind not in writers:
                        target = self.out_dir / f'{stem}_{kind}.mp4'
                        h, w = array.shape[:2]
                        fourcc = cv2.VideoWriter_fourcc(*'mp4v')
                        writers[kind] = cv2.VideoWriter(str(target), fourcc, fps, (w, h))
                        if not writers[kind].isOpened():
                            raise ValueError(f'{target}: OpenCV cannot write mp4 video here')
                        written.append(target)
                    writers[kind].write(cv2.cvtColor(array, cv2.COLOR_RGB2BGR))
        finally:
            for w in writers.values():
                w.release()
        if labels_dir.is_dir():
            written.append(labels_dir)
        return written


def _note(line: str) -> None:
    """Progress the user should see (an engine being built takes seconds), on stderr."""
    print(f'jetseg-predict: {line}', file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point `jetseg-predict`."""
    try:
        args = build_parser().parse_args(argv)
        outputs = {o.strip() for o in args.outputs.split(',') if o.strip()}
        if not outputs or not outputs <= set(OUTPUTS):
            raise UsageError(f'--outputs must be a comma-separated subset of {",".join(OUTPUTS)}, '
                             f'got {args.outputs!r}')
        if not 0.0 <= args.alpha <= 1.0:
            raise UsageError(f'--alpha must be between 0 and 1, got {args.alpha}')
        items = collect_inputs(args.inputs)
        from .checkpoint import NAMED_CHECKPOINTS, CheckpointError
        if args.checkpoint not in NAMED_CHECKPOINTS and not Path(args.checkpoint).exists():
            raise UsageError(f'{args.checkpoint}: no such checkpoint file')
        from .inference import Segmenter

        try:
            shipped = args.checkpoint in NAMED_CHECKPOINTS
            seg = Segmenter.from_checkpoint(args.checkpoint, profile=args.profile if shipped else None,
                                            device=args.device, precision=args.precision,
                                            num_threads=args.threads, backend=args.backend, log=_note)
        except CheckpointError as exc:
            raise UsageError(str(exc)) from None
        except ValueError as exc:  # bad device/precision, a backend that cannot run here
            raise UsageError(str(exc).splitlines()[0]) from None
        _note(f'weights: {seg.meta.trained_on}')
        seg.warmup()  # builds the graph now, so the reported ms/frame is the steady-state figure
        args.output.mkdir(parents=True, exist_ok=True)
        predictor = Predictor(seg, args.output, outputs, args.alpha,
                              sheet_rows=SHEET_ROWS if args.contact_sheet else 0)
        stems: dict[str, int] = {}
        failed = 0
        t0 = time.perf_counter()
        for kind, path in items:
            stem = path.stem
            stems[stem] = stems.get(stem, 0) + 1
            if stems[stem] > 1:  # same name in two folders: keep both
                stem = f'{stem}_{stems[stem]}'
            try:
                if kind == 'image':
                    predictor.image(path, stem)
                else:
                    written = predictor.video(path, stem, args.max_frames, args.video_labels)
                    print(f'{path}: wrote {", ".join(str(p) for p in written)}')
            except ValueError as exc:
                print(f'jetseg-predict: skipped {exc}', file=sys.stderr)
                failed += 1
        wall = time.perf_counter() - t0
        if args.contact_sheet and predictor.sheet:
            from .visualize import contact_sheet

            colours = [tuple(c) for c in seg.palette.tolist()]
            args.contact_sheet.parent.mkdir(parents=True, exist_ok=True)
            write_png(contact_sheet(predictor.sheet, seg.class_names, colours), args.contact_sheet)
            print(f'jetseg-predict: contact sheet of {len(predictor.sheet)} images in {args.contact_sheet}')
        mean_ms = predictor.infer_ms / max(predictor.frames, 1)
        print(f'jetseg-predict: {predictor.frames} frames from {len(items) - failed} inputs into '
              f'{args.output} '
              f'({seg.backend} on {seg.device}, threads {seg.threads}, '
              f'{mean_ms:.1f} ms/frame segmenting, {wall:.1f} s total)')
        if failed:
            print(f'jetseg-predict: {failed} input(s) could not be read', file=sys.stderr)
            return 1
        return 0
    except UsageError as exc:
        return usage_error('jetseg-predict', exc)
    except KeyboardInterrupt:
        print('jetseg-predict: interrupted', file=sys.stderr)
        return 130


if __name__ == '__main__':
    sys.exit(main())
