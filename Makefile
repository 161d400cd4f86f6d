# tf2caffe: TensorFlow/tflearn -> Caffe.
#   make                 export then import MODEL (default vgg19)
#   make env             create both environments (cached in ~/.cache/tf2caffe)
#   make env CAFFE=source  the same with the second Caffe, compiled from source
#                        (tf2caffe/source_caffe.py), as the Caffe that writes: the fallback
#                        for the day Debian bullseye's packages are gone
#   make test            lint, build both Caffes, then the whole test suite, and the handler
#                        tests again written by the other Caffe (what CI runs)
#   make test-fast       lint, then the tests marked neither chroot, containers nor slow
#                        (handlers written natively, verified in OpenCV): the edit loop, minutes
#   make lint            ruff, and vermin's Python 3.9 floor for the code the Caffe chroot runs
#   make convert SRC=... OUT=...
#   make bench           VGG-19 224x224 benchmark, by hand (not in CI) -> bench/results.md
# Environments are created by tf2caffe/environments.py, which is idempotent
# and cached: make's dependencies only save the (sub-second) warm check.

MODEL       ?= vgg19
PYTHON      ?= python3
CHECKPOINT  ?=
INPUT_SHAPE ?=
SRC         ?=
OUT         ?= build/converted

TF2CAFFE := .venv/bin/tf2caffe
REQS     := requirements.txt requirements-no-deps.txt export/requirements.txt
DEBS     := tf2caffe/recipes/debian-packages.txt
ENVS_PY  := tf2caffe/environments.py

# The Caffe that writes converted nets (tf2caffe/runtimes.py; each net is also verified in the
# other Caffe when that is built, and in OpenCV). bullseye: Debian's packaged Caffe in a chroot.
# source: BVLC Caffe + SSD layers compiled from the PyPI sdist into a cached venv (minutes the
# first time). tf2caffe reads the choice from TF2CAFFE_CAFFE.
CAFFE ?= bullseye
ifeq ($(filter $(CAFFE),bullseye source),)
$(error CAFFE must be bullseye or source, not '$(CAFFE)')
endif
export TF2CAFFE_CAFFE := $(CAFFE)
OTHER_CAFFE := $(filter-out $(CAFFE),bullseye source)
# python3 -m tf2caffe.environments COMMAND that builds each Caffe
ENVIRONMENT_OF_bullseye := caffe
ENVIRONMENT_OF_source := caffe-source

.PHONY: all env caffe-env both-caffes export import convert test test-fast lint bench clean

all: export import

env: $(REQS) $(DEBS) $(ENVS_PY)
	$(PYTHON) -m tf2caffe.environments tf
	$(PYTHON) -m tf2caffe.environments $(ENVIRONMENT_OF_$(CAFFE))

# The TF side: .venv (linked to the cached TensorFlow venv) and its console script.
$(TF2CAFFE): $(REQS) $(ENVS_PY)
	$(PYTHON) -m tf2caffe.environments tf
	@touch $@

# The Caffe side lives in the cache only, so there is no file to depend on.
caffe-env: $(DEBS) $(ENVS_PY)
	$(PYTHON) -m tf2caffe.environments $(ENVIRONMENT_OF_$(CAFFE))

# Both Caffes, for the tests: every net is verified in both.
both-caffes: $(DEBS) $(ENVS_PY)
	$(PYTHON) -m tf2caffe.environments caffe
	$(PYTHON) -m tf2caffe.environments caffe-source

# The stage commands, run locally or (RUNTIME=docker) in the stage's image with the working
# folder mounted at /work: paths must then be inside it and relative.
EXPORT_ARGS = export architectures/$(MODEL).py -o build/$(MODEL) \
  $(if $(CHECKPOINT),--checkpoint $(CHECKPOINT)) \
  $(if $(INPUT_SHAPE),--input-shape $(INPUT_SHAPE))
IMPORT_ARGS = import build/$(MODEL)/$(MODEL).h5 -o build/$(MODEL) \
  $(if $(wildcard architectures/$(MODEL).prototxt),--prototxt architectures/$(MODEL).prototxt)

# Stage images (tf2caffe/containers.py): docker when a daemon answers, else podman,
# whose storage and base images live in the cache.
RUNTIME    ?= local
CONTAINERS := $(PYTHON) -m tf2caffe.containers

.PHONY: docker-export docker-import
docker-export docker-import: docker-%:
	$(CONTAINERS) build $*

ifeq ($(RUNTIME),docker)
export: docker-export
	$(CONTAINERS) run export -- $(EXPORT_ARGS)

import: docker-import
	$(CONTAINERS) run import -- $(IMPORT_ARGS)
else
export: $(TF2CAFFE)
	$(TF2CAFFE) $(EXPORT_ARGS)

import: $(TF2CAFFE) caffe-env
	$(TF2CAFFE) $(IMPORT_ARGS)
endif

ifneq ($(filter convert,$(MAKECMDGOALS)),)
ifeq ($(SRC),)
$(error usage: make convert SRC=model [OUT=dir])
endif
endif
convert: $(TF2CAFFE) caffe-env
	$(TF2CAFFE) convert $(SRC) -o $(OUT)

# What runs inside the Caffe chroot (Python 3.9): the import stage and everything it imports,
# and the tests run there (tests/test_caffe_side_units.py). Ruff's per-file-target-version in
# pyproject.toml lists the same (tests/test_lint_config.py).
CHROOT_PYTHON := tf2caffe/__init__.py tf2caffe/atomic.py tf2caffe/errors.py tf2caffe/import_options.py \
  tf2caffe/import_stage.py tf2caffe/intermediate.py tf2caffe/interrupts.py tf2caffe/measure.py \
  tf2caffe/report.py tf2caffe/caffe \
  tests/conftest.py tests/caffe_side tests/test_intermediate.py tests/test_held_interrupts.py \
  tests/intermediate_models.py tests/read_each_in_a_child.py tests/native_in_caffe.py \
  tests/one_layer_nets.py tests/pycaffe_one_layer.py

# Seconds, so it runs first: a Python 3.9 break fails here rather than in the chroot's tests.
# ruff and vermin live in the cached venv, whose console scripts .venv does not link.
lint: $(TF2CAFFE)
	.venv/bin/python -m ruff check --quiet .
	.venv/bin/python -c "import sys, vermin; sys.exit(vermin.main())" -q --no-tips --violations \
	  -t=3.9- $(CHROOT_PYTHON)

# Every net is verified in both Caffes and OpenCV; the handler tests run twice, written by each
# Caffe (they cover every layer type a Caffe writes). Tests are spread over the CPUs by work
# unit (tests/conftest.py: a file, or a batch of the 40 classifiers), slow ones first; the slowest
# are listed.
# The Ctrl-C test runs alone: it loads every CPU itself, and its moments are timed against that.
PYTEST_PARALLEL = -n auto --no-loadscope-reorder
ALONE = tests/test_interrupt.py
test: env both-caffes lint
	.venv/bin/python -m pytest -ra -p no:cacheprovider $(PYTEST_PARALLEL) --durations=25 --ignore=$(ALONE) tests
	.venv/bin/python -m pytest -ra -p no:cacheprovider $(ALONE)
	TF2CAFFE_CAFFE=$(OTHER_CAFFE) .venv/bin/python -m pytest -ra -p no:cacheprovider $(PYTEST_PARALLEL) \
	  tests/handlers

# The conversions of the handler suites use no Caffe (written natively, measured in OpenCV
# only); `make test` measures them in both Caffes too. Test files are spread over the CPUs,
# each whole in one process (its module fixture converts all its cases at once).
test-fast: $(TF2CAFFE) lint
	TF2CAFFE_CAFFE=none .venv/bin/python -m pytest -q -p no:cacheprovider \
	  -m "not chroot and not containers and not slow" $(PYTEST_PARALLEL) tests

bench: $(TF2CAFFE) caffe-env
	$(PYTHON) bench/run.py

# Never touches the cache (~/.cache/tf2caffe): other checkouts share it.
clean:
	rm -rf build .venv
