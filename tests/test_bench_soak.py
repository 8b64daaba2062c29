"""The soak's arithmetic (bench/soak.py): windows of the timeline, RSS growth, the p50 trend."""

from bench.soak import p50_trend, rss_growth, window_seconds, windows


def _event(at: float, ms: float, status: int | str = 200) -> tuple[float, float, int | str, str]:
    return (at, ms / 1000.0, status, "0")


def test_window_is_a_minute_for_a_real_soak_and_a_sixth_of_a_short_one():
    assert window_seconds(600) == 60.0
    assert window_seconds(300) == 60.0
    assert window_seconds(60) == 10.0
    assert window_seconds(12) == 5.0


def test_windows_split_requests_by_send_time_with_rate_percentiles_and_errors():
    events = [_event(1.0, 100), _event(2.0, 300), _event(9.9, 200), _event(10.0, 400),
              _event(11.0, 0, "timeout"), _event(19.5, 500)]  # fmt: skip
    rows = windows(events, [], window_s=10, duration_s=20)
    assert [r["requests"] for r in rows] == [3, 3]
    assert [r["errors"] for r in rows] == [0, 1]
    assert [r["rps"] for r in rows] == [0.3, 0.3]
    assert rows[0]["p50_ms"] == 200.0 and rows[0]["p99_ms"] == 300.0
    assert rows[1]["p50_ms"] == 400.0 and rows[1]["p99_ms"] == 500.0  # the error is not a latency


def test_windows_last_window_is_short_when_the_duration_is_not_a_multiple():
    rows = windows([_event(24.0, 10)], [], window_s=10, duration_s=25)
    assert [(r["start_s"], r["end_s"]) for r in rows] == [(0, 10), (10, 20), (20, 25)]
    assert rows[2]["rps"] == 0.2


def test_windows_take_the_median_of_the_rss_samples_in_each_and_ignore_the_warm_up():
    rss = [(-5.0, 999.0), (1.0, 100.0), (2.0, 300.0), (3.0, 110.0), (11.0, 120.0)]
    rows = windows([], rss, window_s=10, duration_s=20)
    assert [r["rss_mb"] for r in rows] == [110.0, 120.0]


def test_windows_messages_per_session_at_each_window_end_count_back_two_per_later_200():
    events = [_event(1.0, 10), _event(2.0, 10), _event(12.0, 10), _event(13.0, 0, 503)]
    # 2 sessions holding 10 messages after the run: the 200 sent in window 2 added 2 of them.
    rows = windows(events, [], window_s=10, duration_s=20, messages_after=10, sessions=2)
    assert [r["msgs_per_session"] for r in rows] == [4.0, 5.0]


def test_rss_growth_compares_the_median_of_the_first_and_last_windows():
    rss = [(0.5, 100.0), (1.5, 200.0), (2.5, 100.0),  # one spike: the median ignores it
           (50.0, 104.0), (55.0, 104.0), (59.0, 106.0)]  # fmt: skip
    growth = rss_growth(rss, window_s=10, duration_s=60)
    assert growth == {"first_mb": 100.0, "last_mb": 104.0, "growth_pct": 4.0}


def test_rss_growth_is_unknown_without_samples_in_both_windows():
    assert rss_growth([(55.0, 100.0)], window_s=10, duration_s=60)["growth_pct"] is None


def _row(start: float, p50: float, disturbed: bool = False) -> dict:
    return {"start_s": start, "p50_ms": p50, "requests": 10, "errors": 0, "disturbed": disturbed}


def test_p50_trend_reports_a_climb_and_its_slope_per_minute():
    trend = p50_trend([_row(0, 200), _row(60, 230), _row(120, 260)])
    assert trend["climbs"] is True
    assert trend["change_pct"] == 30.0
    assert trend["slope_ms_per_min"] == 30.0


def test_p50_trend_flat_within_the_threshold_is_not_a_climb():
    trend = p50_trend([_row(0, 200), _row(60, 205), _row(120, 210)])
    assert trend["climbs"] is False


def test_p50_trend_leaves_out_disturbed_windows_when_two_quiet_ones_remain():
    trend = p50_trend([_row(0, 200), _row(60, 400, disturbed=True), _row(120, 202)])
    assert trend["undisturbed_only"] is True and trend["windows"] == 2
    assert trend["climbs"] is False
    everything = p50_trend([_row(0, 200, True), _row(60, 400, True), _row(120, 202)])
    assert everything["undisturbed_only"] is False and everything["windows"] == 3
