"""nnterp users' import: `from nnglass import StandardizedTransformer`."""


def test_standardized_transformer_imports_from_the_package_root():
    from nnglass import StandardizedTransformer
    from nnglass.modeling.standard import StandardizedTransformer as defined
    assert StandardizedTransformer is defined


def test_util_apply_is_reachable_as_in_0_4():
    import nnglass
    assert callable(nnglass.util.apply)
