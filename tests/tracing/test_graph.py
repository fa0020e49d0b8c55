"""Graph and Node are inert data: creating nodes links users, nothing runs."""
from nnglass.tracing.graph import Graph


def test_create_node_appends_and_links_users():
    graph = Graph()
    a = graph.create_node("call_function", max, (1, 2))
    b = graph.create_node("call_function", min, (a, 3), deps=[a])
    assert graph.nodes == [a, b] and a.users == [b.index] and b.deps == [a]
    assert (a.index, b.index, b.name) == (0, 1, "call_function_1")


def test_depend_adds_a_wait_once():
    graph = Graph()
    a, b = graph.create_node("log", None), graph.create_node("log", None)
    graph.depend(b, a)
    graph.depend(b, a)
    graph.depend(b, b)
    assert b.deps == [a] and a.users == [b.index]


def test_nodes_hold_no_values_or_run_state():
    node = Graph().create_node("call_function", abs, (-1,))
    assert set(type(node).__slots__) == {"op", "target", "args", "kwargs", "graph", "index", "deps", "users",
                                         "where", "invoke", "saved", "refs"}


def test_ancestors_and_kinds():
    root = Graph(0, None, "session")
    body = Graph(1, root, "loop")
    assert body.ancestors() == [body, root] and root.sequential and body.sequential
    assert not Graph(2, root, "trace").sequential
