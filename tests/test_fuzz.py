"""Property-based fuzzing of every reader of user input: arbitrary bytes and strings only ever give
convrnn's own exceptions (ConvrnnError and subclasses) with a message, never another exception type,
a hang or a crash. The number of cases each property runs is in its name (hypothesis max_examples)."""
import io
import string

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from convrnn.errors import ConvrnnError

def fuzz(n: int):
    return settings(max_examples=n, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

SPEC_CHARS = string.ascii_lowercase + string.digits + " :,=x.-_" + "é\t\n"
spec_tokens = st.sampled_from(["conv:8,3x3", "pool:2x2", "cols", "lstm:16,bi", "gru:8", "cls:last", "blocks:8",
                               "flatten", "dense:10", "drop:0.2", "bn", "reg:seq", "ctc", "embed:8", "lm",
                               "mdlstm:4,dirs=4", "tile:2x2", "collapse:sum"])


def _ok_or_own_error(fn, *args):
    try:
        fn(*args)
    except ConvrnnError as e:
        assert str(e).strip(), "error without a message"


@fuzz(400)
@given(st.text(alphabet=SPEC_CHARS, max_size=60))
def test_spec_parser_400_random_strings(text):
    from convrnn.spec.grammar import parse
    _ok_or_own_error(parse, text)


@fuzz(150)
@given(st.lists(spec_tokens, min_size=1, max_size=6), st.sampled_from([(1, 16, 64), (3, 8, 8), (None, 1, 28, 28), (12,)]))
def test_spec_builder_150_random_token_sequences(tokens, shape):
    from convrnn.spec.builder import build_model
    _ok_or_own_error(build_model, " ".join(tokens), shape, 5)


def _idx_header(dims, type_code=0x08):
    return bytes([0, 0, type_code, len(dims)]) + b"".join(int(d).to_bytes(4, "big") for d in dims)


@fuzz(200)
@given(st.one_of(
    st.binary(max_size=64),
    st.builds(lambda dims, payload: _idx_header(dims) + payload,
              st.lists(st.integers(0, 6), min_size=0, max_size=4), st.binary(max_size=80)),
    st.builds(lambda code, payload: bytes([0, 0, code, 1]) + payload, st.integers(0, 255), st.binary(max_size=20)),
))
def test_idx_reader_200_random_files(tmp_path_factory, data):
    from convrnn.data.mnist import read_idx
    path = tmp_path_factory.mktemp("idx") / "fuzz-idx1-ubyte"
    path.write_bytes(data)
    _ok_or_own_error(read_idx, path)


@fuzz(60)
@given(st.binary(max_size=64))
def test_idx_reader_60_random_gzip_payloads(tmp_path_factory, payload):
    import gzip
    from convrnn.data.mnist import read_idx
    path = tmp_path_factory.mktemp("idxgz") / "fuzz-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(payload)[: max(3, len(payload))])  # sometimes truncated gzip too
    _ok_or_own_error(read_idx, path)


@fuzz(200)
@given(st.binary(max_size=200), st.sampled_from(["char", "byte"]))
def test_corpus_reader_200_random_files(tmp_path_factory, data, unit):
    from convrnn.data.text import read_corpus
    path = tmp_path_factory.mktemp("corpus") / "text.txt"
    path.write_bytes(data)
    _ok_or_own_error(read_corpus, path, unit)


@fuzz(150)
@given(st.one_of(st.binary(max_size=200),
                 st.builds(lambda head, cut: head[:cut], st.sampled_from(["png", "jpeg", "bmp", "gif"]).map(
                     lambda fmt: _image_bytes(fmt)), st.integers(0, 400))))
def test_image_loader_150_random_files(tmp_path_factory, data):
    from convrnn.data.images import load_gray
    path = tmp_path_factory.mktemp("img") / "line.png"
    path.write_bytes(data)
    _ok_or_own_error(load_gray, path)


def _image_bytes(fmt: str) -> bytes:
    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(np.arange(16 * 24, dtype=np.uint8).reshape(16, 24)).save(buf, format=fmt.upper())
    return buf.getvalue()
