# tf2caffe: TensorFlow/tflearn -> Caffe.
#   make                 export then import MODEL (default vgg19)
#   make env             create both environments (cached in ~/.cache/tf2caffe)
#   make test            run the test suite
#   make convert SRC=... OUT=...
# Environments are created by tf2caffe/environments.py, which is idempotent
# and cached: make's dependencies only save the (sub-second) warm check.

MODEL       ?= vgg19
PYTHON      ?= python3
CHECKPOINT  ?=
INPUT_SHAPE ?=
SRC         ?=
OUT         ?= build/converted

TF2CAFFE := .venv/bin/tf2caffe
REQS     := requirements.txt export/requirements.txt
DEBS     := import/debian-packages.txt
ENVS_PY  := tf2caffe/environments.py

.PHONY: all env caffe-env export import convert test clean

all: export import

env: $(REQS) $(DEBS) $(ENVS_PY)
	$(PYTHON) -m tf2caffe.environments all

# The TF side: .venv (linked to the cached TensorFlow venv) and its console script.
$(TF2CAFFE): $(REQS) $(ENVS_PY)
	$(PYTHON) -m tf2caffe.environments tf
	@touch $@

# The Caffe side lives in the cache only, so there is no file to depend on.
caffe-env: $(DEBS) $(ENVS_PY)
	$(PYTHON) -m tf2caffe.environments caffe

export: $(TF2CAFFE)
	$(TF2CAFFE) export architectures/$(MODEL).py -o build/$(MODEL) \
	  $(if $(CHECKPOINT),--checkpoint $(CHECKPOINT)) \
	  $(if $(INPUT_SHAPE),--input-shape $(INPUT_SHAPE))

import: $(TF2CAFFE) caffe-env
	$(TF2CAFFE) import build/$(MODEL)/$(MODEL).h5 -o build/$(MODEL) \
	  $(if $(wildcard architectures/$(MODEL).prototxt),--prototxt architectures/$(MODEL).prototxt)

ifneq ($(filter convert,$(MAKECMDGOALS)),)
ifeq ($(SRC),)
$(error usage: make convert SRC=model [OUT=dir])
endif
endif
convert: $(TF2CAFFE) caffe-env
	$(TF2CAFFE) convert $(SRC) -o $(OUT)

test: env
	.venv/bin/python -m pytest -ra -p no:cacheprovider tests

# Never touches the cache (~/.cache/tf2caffe): other checkouts share it.
clean:
	rm -rf build .venv
