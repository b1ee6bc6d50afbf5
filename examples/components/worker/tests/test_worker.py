"""Run with: python3 -m unittest discover -s examples/components/worker/tests"""
import os
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import worker  # noqa: E402


class Metrics(unittest.TestCase):
    def test_metrics_text_lists_each_target(self):
        state = worker.State(["http://a/health", "http://b/health"], 5.0)
        state.record("http://a/health", True, 0.01, 200, None)
        state.record("http://b/health", False, 0.02, None, "refused")
        text = state.metrics()
        self.assertIn('uptime_probe_success{target="http://a/health"} 1', text)
        self.assertIn('uptime_probe_success{target="http://b/health"} 0', text)
        self.assertIn("uptime_probes_total 2", text)

    def test_targets_parse_and_skip_blanks(self):
        self.assertEqual(worker.parse_targets(" http://x/ , ,http://y/"), ["http://x/", "http://y/"])


class StateFile(unittest.TestCase):
    def test_the_probe_count_survives_a_restart(self):
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "state.json")
            first = worker.State(["http://a/"], 5.0, path)
            self.assertEqual(first.total, 0)
            first.record("http://a/", True, 0.01, 200, None)
            first.record("http://a/", False, 0.01, None, "refused")
            first.round_done()
            again = worker.State(["http://a/"], 5.0, path)
            self.assertEqual(again.total, 2)
            self.assertFalse(os.path.exists(path + ".new"))

    def test_without_a_state_file_nothing_is_written(self):
        with tempfile.TemporaryDirectory() as d:
            state = worker.State(["http://a/"], 5.0)
            state.record("http://a/", True, 0.01, 200, None)
            state.round_done()
            self.assertEqual(os.listdir(d), [])


if __name__ == "__main__":
    unittest.main()
