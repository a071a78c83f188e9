"""Writes uncompressed copies of the shared corpus PDFs to fuzz/corpus/pdf_plain/, so the
`pdf` target's mutations land in content streams, fonts and CMaps rather than in Flate data.
Needs pikepdf (pip install pikepdf, in a venv outside the repo). Files over 300 kB after
decompression are skipped (libFuzzer handles small inputs far faster).

Usage: python fuzz/make_seeds.py   then   fuzz/run.sh 600 pdf   (run.sh picks the folder up)
"""

import pathlib

import pikepdf

ROOT = pathlib.Path(__file__).resolve().parent
CORPUS = ROOT.parent.parent / "shared" / "corpus" / "pdf"
OUT = ROOT / "corpus" / "pdf_plain"


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    for path in sorted(CORPUS.rglob("*.pdf")):
        target = OUT / (path.parent.name + "__" + path.name)
        try:
            with pikepdf.open(path) as pdf:
                pdf.save(
                    target,
                    compress_streams=False,
                    stream_decode_level=pikepdf.StreamDecodeLevel.generalized,
                    object_stream_mode=pikepdf.ObjectStreamMode.disable,
                )
        except Exception as e:  # encrypted, broken: the compressed original is seeded anyway
            print(f"skip {path.name}: {e}")
            continue
        if target.stat().st_size > 300_000:
            target.unlink()


if __name__ == "__main__":
    main()
