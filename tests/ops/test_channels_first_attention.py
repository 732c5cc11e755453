"""channels_first_attention: the SDPA backend and the tokens-last formulation agree with the reference."""
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from visionzoo.ops.channels_first_attention import channels_first_attention


@settings(max_examples=8, deadline=None)
@given(
    batch=st.integers(1, 3), qk=st.integers(1, 17), dv=st.integers(1, 40), lq=st.integers(1, 50), lk=st.integers(1, 50)
)
def test_channels_first_attention_sdpa_matches_reference(batch, qk, dv, lq, lk):
    q, k, v = torch.randn(batch, qk, lq), torch.randn(batch, qk, lk), torch.randn(batch, dv, lk)
    expected = channels_first_attention.reference(q, k, v, scale=0.3)
    actual = channels_first_attention.backends["sdpa"].fn(q, k, v, scale=0.3)
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)
    # Both default the scale to 1/sqrt(query width).
    torch.testing.assert_close(
        channels_first_attention.backends["sdpa"].fn(q, k, v), channels_first_attention.reference(q, k, v),
        rtol=1e-5, atol=1e-5,
    )
    # Equal to tokens-last softmax attention: the op only changes the layout.
    tokens_last = torch.softmax(q.transpose(1, 2) @ k * 0.3, dim=-1) @ v.transpose(1, 2)
    torch.testing.assert_close(expected, tokens_last.transpose(1, 2), rtol=1e-5, atol=1e-5)


def test_cpu_calls_use_the_reference():
    q = torch.randn(1, 4, 3)
    assert channels_first_attention.select(q, q, q) is channels_first_attention.reference
