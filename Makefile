PY ?= python3
QUESTION ?= Q: 905*9+14*3+220*6+3+71*0

.PHONY: install demo test unit lint bench

install:
	bash scripts/install.sh

demo: install
	loom run "$(QUESTION)"

test: install
	RAY_AUTH_MODE=disabled $(PY) -m pytest -q -rs -p no:cacheprovider

unit:
	$(PY) -m pytest -q -m "not integration"

lint:
	ruff check .
