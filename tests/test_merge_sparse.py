"""merge --method ties|dare-linear|dare-ties|magnitude-prune: peft's merge rules applied to each module's whole
change B·A (never to A and B apart), then written as LoRA pairs at the sum of the ranks or --rank."""

from __future__ import annotations

import json

import pytest
import torch
from peft.utils import merge_utils

from stylelora.adapters.formats import read_lora
from stylelora.adapters.merge import merge_sparse
from stylelora.adapters.stack import StyleWeight
from stylelora.cli.main import main
from stylelora.files import read_safetensors

FULL = 4096  # a rank above every tiny module's sides: the SVD is then exact


def _items(two_adapters, first=0.6, second=0.4):
    return [(read_lora(two_adapters[0])[0], StyleWeight(first, first)),
            (read_lora(two_adapters[1])[0], StyleWeight(second, second))]


@pytest.mark.parametrize("method", ["ties", "magnitude-prune"])
def test_a_sparse_merge_is_peft_s_rule_on_each_module_s_whole_change(two_adapters, method):
    items = _items(two_adapters)
    merged, error = merge_sparse(items, method, 0.5, FULL)
    rule = {"ties": merge_utils.ties, "magnitude-prune": merge_utils.magnitude_prune}[method]
    assert error < 1e-6
    for key, module in merged.items():
        tasks = [weights[key].delta().double() for weights, _ in items]
        expected = rule(tasks, torch.tensor([0.6, 0.4], dtype=torch.float64), 0.5)
        assert torch.allclose(module.delta().double(), expected, atol=1e-6)
        assert (expected == 0).float().mean() > 0.2  # it pruned: at density 0.5, about half of each change is gone


def test_ties_keeps_only_the_elected_sign(two_adapters):
    items = _items(two_adapters, 1.0, 1.0)
    merged, _ = merge_sparse(items, "ties", 1.0, FULL)
    for key, module in merged.items():
        first, second = (weights[key].delta() for weights, _ in items)
        disagree = (first.sign() * second.sign()) < 0
        elected = torch.where((first + second) >= 0, 1.0, -1.0)
        # Where the two disagree, the merged change is the entry whose sign won, alone (not the sum)
        winner = torch.where(first.sign() == elected, first, second)
        assert torch.allclose(module.delta()[disagree], winner[disagree], atol=1e-6)


def test_dare_is_seeded_and_a_lower_rank_reports_its_error(two_adapters):
    items = _items(two_adapters)
    a, _ = merge_sparse(items, "dare-linear", 0.5, FULL, seed=3)
    b, _ = merge_sparse(items, "dare-linear", 0.5, FULL, seed=3)
    c, _ = merge_sparse(items, "dare-linear", 0.5, FULL, seed=4)
    assert all(torch.equal(a[k].delta(), b[k].delta()) for k in a)
    assert any(not torch.equal(a[k].delta(), c[k].delta()) for k in a)
    summed, error = merge_sparse(items, "dare-ties", 0.5, None, seed=3)
    assert all(module.rank == 4 for module in summed.values())  # the two rank-2 adapters' ranks, added
    assert 0 < error < 1


def test_the_merge_command_writes_the_method_and_refuses_what_does_not_fit(two_adapters, tmp_path, capsys):
    out = tmp_path / "ties.safetensors"
    assert main(["merge", f"{two_adapters[0]}:0.5", f"{two_adapters[1]}:0.5", "--method", "ties", "--density", "0.5",
                 "-o", str(out)]) == 0
    assert "ties at the sum of the ranks: relative error of the merged deltas" in capsys.readouterr().out
    metadata = read_safetensors(out).metadata
    assert (metadata["stylelora.merge_method"], metadata["stylelora.merge_density"]) == ("ties", "0.5")
    assert [s["file"] for s in json.loads(metadata["stylelora.merged_from"])] == [str(p) for p in two_adapters]
    for argv, message in (
            (["--method", "ties"], "--density = None: --method ties keeps this share of each change's entries, in (0, 1]"),
            (["--method", "ties", "--density", "1.5"], "--density = 1.5: --method ties keeps this share"),
            (["--density", "0.5"], "--density = 0.5: only ties, dare-linear, dare-ties, magnitude-prune, klora take it"),
            (["--method", "mean"], "--method = 'mean': choose one of cat, svd, ties, dare-linear, dare-ties"),
            (["--method", "ties", "--density", "0.5", "--into-base"], "--into-base fuses the exact weighted sum")):
        assert main(["merge", str(two_adapters[0]), *argv, "-o", str(tmp_path / "x.safetensors")]) == 2
        assert message in capsys.readouterr().err


def test_klora_gives_each_module_the_change_whose_top_k_entries_weigh_more(two_adapters):
    plain = _items(two_adapters, 1.0, 1.0)

    def top(delta):
        return delta.abs().flatten().topk(int(0.25 * delta.numel())).values.sum()

    # the second adapter's weight at the median ratio of the two top-K sums: each then wins about half the modules
    ratios = sorted(float(top(plain[0][0][k].delta()) / top(plain[1][0][k].delta())) for k in plain[0][0])
    items = _items(two_adapters, 1.0, ratios[len(ratios) // 2])
    merged, error = merge_sparse(items, "klora", 0.25, FULL)
    assert error < 1e-6
    chosen = set()
    for key, module in merged.items():
        first, second = (weight.for_module(*key) * weights[key].delta() for weights, weight in items)
        winner = 0 if top(first) >= top(second) else 1
        assert torch.allclose(module.delta(), (first, second)[winner], atol=1e-6)
        chosen.add(winner)
    assert chosen == {0, 1}  # at these weights each adapter wins somewhere: the choice is per module
