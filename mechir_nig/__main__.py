"""``python -m mechir_nig ...``: the ``mechir-nig`` command line (see ``mechir_nig.cli``)."""

from mechir_nig.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
