# Sourced by the device scripts here (repository root on the device, .whl carried): installs the carried wheels
# (fair-esm, nvitop, snakemake and what the image lacks, see GUIDE) and points Python at them and at the package.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || exit 1
export PYTHONPATH=/tmp/site:$PWD/scripts PYTHONUNBUFFERED=1
