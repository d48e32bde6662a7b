"""Mermaid and ASCII renderings of task graphs (graflow.core.render)."""

from __future__ import annotations

import re

from graflow import task, workflow
from graflow.core.graph import TaskGraph
from graflow.core.render import to_ascii, to_mermaid
from graflow.core.task import TaskWrapper


def _tasks(*names: str) -> list[TaskWrapper]:
    return [task(name)(lambda: None) for name in names]


def _layer_of(text: str, node: str) -> int:
    """The layer number (``[n]``) of the line that lists ``node`` as a node (not in an edge line)."""
    for line in text.splitlines():
        m = re.match(r"\[(\d+)\] (.*)$", line)
        if m and re.search(rf"(^|[ ,\[|]){re.escape(node)}($|[ ,\]|])", m.group(2)):
            return int(m.group(1))
    raise AssertionError(f"{node} not listed as a node in:\n{text}")


# -- chain ----------------------------------------------------------------------------------------------


def test_chain_mermaid() -> None:
    with workflow("chain") as wf:
        a, b, c = _tasks("a", "b", "c")
        a >> b >> c
    text = wf.graph.to_mermaid()
    assert text.splitlines()[0] == "flowchart TD"
    for node in "abc":
        assert f'    {node}["{node}"]' in text
    assert "    a --> b" in text
    assert "    b --> c" in text
    assert "subgraph" not in text


def test_chain_ascii_layers() -> None:
    with workflow("chain") as wf:
        a, b, c = _tasks("a", "b", "c")
        a >> b >> c
    text = wf.graph.to_ascii()
    assert text.splitlines()[0] == "graph chain"
    assert [_layer_of(text, n) for n in "abc"] == [1, 2, 3]
    assert "a --> b" in text
    assert "b --> c" in text
    assert "(loop)" not in text


def test_graph_methods_delegate_to_render() -> None:
    with workflow("w") as wf:
        a, b = _tasks("a", "b")
        a >> b
    assert wf.graph.to_mermaid() == to_mermaid(wf.graph)
    assert wf.graph.to_ascii() == to_ascii(wf.graph)


# -- diamond ---------------------------------------------------------------------------------------------


def test_diamond() -> None:
    with workflow("diamond") as wf:
        a, b, c, d = _tasks("a", "b", "c", "d")
        a >> b >> d
        a >> c >> d
    ascii_text = wf.graph.to_ascii()
    assert _layer_of(ascii_text, "a") == 1
    assert _layer_of(ascii_text, "b") == _layer_of(ascii_text, "c") == 2
    assert _layer_of(ascii_text, "d") == 3
    assert "[2] b, c" in ascii_text
    for edge in ("a --> b", "a --> c", "b --> d", "c --> d"):
        assert edge in ascii_text
        assert f"    {edge}" in wf.graph.to_mermaid()


def test_longest_path_layering() -> None:
    """A node sits below its deepest predecessor: a >> b >> c and a >> c puts c in layer 3."""
    with workflow("skip") as wf:
        a, b, c = _tasks("a", "b", "c")
        a >> b >> c
        a >> c
    assert _layer_of(wf.graph.to_ascii(), "c") == 3


# -- groups ----------------------------------------------------------------------------------------------


def test_group_mermaid_subgraph() -> None:
    with workflow("grp") as wf:
        a, b, c, d = _tasks("a", "b", "c", "d")
        a >> (b | c).set_group_name("fan") >> d
    text = wf.graph.to_mermaid()
    lines = text.splitlines()
    start = lines.index('    subgraph fan["fan"]')
    end = lines.index("    end", start)
    assert lines[start + 1 : end] == ['        b["b"]', '        c["c"]']
    assert "    a --> fan" in text
    assert "    fan --> d" in text
    # members are drawn only inside their group
    assert sum(1 for line in lines if line.strip() == 'b["b"]') == 1


def test_group_ascii_brackets() -> None:
    with workflow("grp") as wf:
        a, b, c, d = _tasks("a", "b", "c", "d")
        a >> (b | c) >> d
    text = wf.graph.to_ascii()
    assert "[2] ParallelGroup_1 [b | c]" in text
    assert "a --> ParallelGroup_1" in text
    assert "ParallelGroup_1 --> d" in text
    assert _layer_of(text, "d") == 3


def test_nested_group_and_chain_member() -> None:
    with workflow("nested") as wf:
        a, b, c, e, x, y = _tasks("a", "b", "c", "e", "x", "y")
        a >> (b | (c >> e) | (x | y).set_group_name("inner")).set_group_name("outer")
    ascii_text = wf.graph.to_ascii()
    assert "outer [b | c >> e | inner [x | y]]" in ascii_text
    assert "c --> e" not in ascii_text  # drawn as "c >> e" inside the brackets
    mermaid = wf.graph.to_mermaid().splitlines()
    outer = mermaid.index('    subgraph outer["outer"]')
    inner = mermaid.index('        subgraph inner["inner"]')
    assert outer < inner
    assert mermaid[inner + 1 : inner + 3] == ['            x["x"]', '            y["y"]']
    assert "    c --> e" in mermaid


# -- loops -----------------------------------------------------------------------------------------------


def test_loop_ascii_back_edge() -> None:
    with workflow("agent") as wf:
        start, agent, tool, done = _tasks("start", "agent", "tool", "done")
        start >> agent >> tool >> agent
        agent >> done
    text = wf.graph.to_ascii()
    assert "tool --> agent (loop)" in text
    assert "agent --> tool" in text and "agent --> tool (loop)" not in text
    assert _layer_of(text, "start") == 1
    assert _layer_of(text, "agent") == 2
    assert _layer_of(text, "tool") == 3


def test_loop_mermaid_has_every_edge() -> None:
    with workflow("agent") as wf:
        agent, tool = _tasks("agent", "tool")
        agent >> tool >> agent
    text = wf.graph.to_mermaid()
    assert "    agent --> tool" in text
    assert "    tool --> agent" in text


def test_pure_cycle_ascii_terminates() -> None:
    graph = TaskGraph("ring")
    for t in _tasks("p", "q", "r"):
        graph.add_node(t)
    graph.add_edge("p", "q")
    graph.add_edge("q", "r")
    graph.add_edge("r", "p")
    text = to_ascii(graph)
    assert "r --> p (loop)" in text
    assert [_layer_of(text, n) for n in "pqr"] == [1, 2, 3]


def test_self_loop() -> None:
    graph = TaskGraph("self")
    (t,) = _tasks("again")
    graph.add_node(t)
    graph.add_edge("again", "again")
    assert "again --> again (loop)" in to_ascii(graph)
    assert "    again --> again" in to_mermaid(graph)


# -- ids and labels ----------------------------------------------------------------------------------------


def test_mermaid_sanitizes_ids_and_quotes_labels() -> None:
    graph = TaskGraph("odd")
    names = ["load data", "load-data", "end", 'say "hi"']
    for t in _tasks(*names):
        graph.add_node(t)
    graph.add_edge("load data", "load-data")
    graph.add_edge("load-data", "end")
    graph.add_edge("end", 'say "hi"')
    text = to_mermaid(graph)
    assert '    load_data["load data"]' in text
    assert '    load_data_2["load-data"]' in text  # collision after sanitizing gets a suffix
    assert '    end_["end"]' in text  # a Mermaid keyword is never a bare id
    assert '    say__hi_["say #quot;hi#quot;"]' in text
    assert "    load_data --> load_data_2" in text
    assert "    load_data_2 --> end_" in text
    for line in text.splitlines()[1:]:
        ident = line.strip().split("[", 1)[0].split(" ")[0]
        assert re.fullmatch(r"[0-9A-Za-z_]+", ident), line


def test_empty_graph() -> None:
    graph = TaskGraph("nothing")
    assert to_mermaid(graph) == "flowchart TD\n"
    assert "(empty)" in to_ascii(graph)
