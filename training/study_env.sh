# Sourced by the offline studies (signals.sh, heldout.sh): one venv with every package they
# import, so either script works after the other. Sets `py` to its interpreter.
[ -x training/.venv-signals/bin/python ] || python3 -m venv training/.venv-signals
py=training/.venv-signals/bin/python
"$py" -c 'import numpy, sklearn, tokenizers' 2>/dev/null ||
  training/.venv-signals/bin/pip install -q numpy==2.2.6 scikit-learn==1.9.1 tokenizers==0.23.3
