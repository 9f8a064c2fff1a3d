"""crude_gelu: exact GELU -> x * sigmoid(1.702 x).

Matches every exact GELU (see `gelu_patterns`: the erf and erfc forms, any
association of x * 0.5 * core) and emits::

    x ----------------------------+
    |                             |
    Mul(x, 1.702) --> Sigmoid --> Mul   (replaces the GELU's root Mul)

Math: GELU(x) = x Phi(x) and Phi(x) ~ sigmoid(1.702 x) (Bowling et al. 2009).
Error bound: max over x of |x Phi(x) - x sigmoid(1.702 x)| = 0.0203, at
|x| = 2.27 (float64 grid on [-12, 12], step 1e-5); the difference vanishes for
large |x|.  Measured on all-MiniLM-L6-v2 (6 layers), MRPC dev rows 1-16 at
batch 16, sequence 128: max |delta sequence_output| = 0.324 on real tokens
(0.587 with padding positions), and the sentence embeddings (mean-pooled,
L2-normalised) keep cosine >= 0.9958 (mean 0.9969) with the exact model: below
0.999.  That is the approximation, not the rewrite: Hugging Face's MiniLM with
hidden_act="quick_gelu" (the same x sigmoid(1.702 x)) gives the same embeddings
to cosine 0.99999 (tests/test_rewrites_numeric.py).

AWS Neuron's BERT demo uses this form (`--crude_gelu`): cheaper on hardware
without erf.  On CPU it does not pay: oneDNN's Grappler remapper fuses the exact
GELU (and the tanh form) into the MatMul + BiasAdd before it (_FusedMatMul with
GeluExact), while Mul + Sigmoid + Mul stay separate element-wise ops; measured
end to end on MiniLM (batch 8, sequence 128, one thread) it is no faster.
"""

from rewrites.gelu_patterns import ExactGeluPass, binary, scalar, unary

#: The slope of the logistic approximation of Phi.
CRUDE_GELU_SLOPE = 1.702


class CrudeGelu(ExactGeluPass):
    """Exact GELU -> x * sigmoid(1.702 x)."""

    name = "crude_gelu"
    exact = False
    max_abs_error = ("0.0203 per activation (|x| = 2.27); MiniLM sequence_output "
                     "max abs 0.324 (real tokens), embedding cosine >= 0.9958")
    #: Measured, not chosen: on MiniLM the embedding cosine of x*sigmoid(1.702x) is
    #: 0.9955 on MRPC text and 0.9886 on random ids (HF's quick_gelu, the same
    #: function, gives the same), so 0.999 cannot hold.
    verify_bounds = {"min_cos": 0.98, "argmax": 0.99}

    @classmethod
    def expected_sites(cls, layers, cls_only_outputs):
        return layers  # one GELU per feed-forward

    def emit(self, edit, x, dtype, scope):
        scaled = binary(edit, "Mul", scope, x, scalar(edit, scope, CRUDE_GELU_SLOPE, dtype), dtype)
        gate = unary(edit, "Sigmoid", scope, scaled, dtype)
        return binary(edit, "Mul", scope, x, gate, dtype)
