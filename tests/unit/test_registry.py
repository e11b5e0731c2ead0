import pytest

from actsparse.methods import Registry


def test_register_get_and_list():
    reg: Registry[type] = Registry("sparsity")

    @reg.register("b")
    class B: ...

    @reg.register("a")
    class A: ...

    assert (
        reg.get("a") is A and reg.names() == ["a", "b"] and "b" in reg and list(reg) == ["a", "b"]
    )


def test_unknown_and_duplicate_names_are_errors():
    reg: Registry[object] = Registry("lowrank")
    reg.register("svd")(object())
    with pytest.raises(KeyError, match="unknown lowrank method 'nsvd'; registered: svd"):
        reg.get("nsvd")
    with pytest.raises(ValueError, match="registered twice"):
        reg.register("svd")(object())
