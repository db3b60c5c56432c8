"""`python -m envs_jax.demo`: runs on small batches and reports a perfect oracle."""

import envs_jax.demo as demo


def _table(out):
    rows = {}
    for line in out.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| ") and len(cells) == 7 and cells[0] not in ("env",) and not cells[0].startswith("-"):
            rows[cells[0]] = cells
    return rows


def test_demo_main_prints_table_with_perfect_oracle(capsys):
    demo.main(["--episodes", "64", "--oracle-episodes", "4", "--envs", "Maze-5x5,Taxi-v3"])
    out = capsys.readouterr().out
    assert "| env | random: success |" in out
    rows = _table(out)
    assert set(rows) == {"Maze-5x5", "Taxi-v3"}, out
    for name, cells in rows.items():
        random_success = float(cells[1])
        assert 0.0 <= random_success <= 1.0
        assert cells[4] == "1.000 (64 levels)", (name, cells)  # oracle: every level solved
        assert float(cells[5]) > 0  # oracle mean steps
    # A rendered level of each environment precedes the table.
    assert "Maze-5x5: 5x5 glyphs" in out and "Taxi-v3: 7x11 glyphs" in out
    assert "+---------+" in out  # Taxi's border


def test_oracle_play_counts_unsolvable_levels_as_failures(monkeypatch):
    """Levels the oracle cannot solve (None) count as failures instead of crashing the demo."""
    import envs_jax

    env, params = envs_jax.make("Maze-5x5")
    monkeypatch.setattr(demo, "optimal_actions", lambda *a, **k: None)
    success, mean_len, _ = demo.oracle_play(env, params, 4)
    assert success == 0.0 and mean_len == 0.0
