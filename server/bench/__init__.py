"""The performance tester behind `performance_tester.py`.

Modules, each small and usable on its own:
  components.py  VAD / ASR / LLM / TTS measured in this process, with the server's own providers
  e2e.py         simulated devices (server.devsim) against the real server, per-turn timings
  resources.py   the server process's CPU and RSS, sampled while devices talk
  load.py        the ramp: add devices until p95 first-reply latency passes a threshold
  report.py      the run record, its JSON form, terminal tables
  compare.py     ratios between two JSON reports
  chart.py       the PNG chart (drawn with png.py and font.py, no plotting library)
  testset.py     built-in sentences and prompts, user WAV+transcript folders, WER/CER
  cli.py         the command line
"""
