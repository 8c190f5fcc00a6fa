"""The performance tester behind `performance_tester.py`.

Modules, each small and usable on its own:
  cli.py             the command line: options, modes, Ctrl-C, saving
  components.py      runs each configured provider in this process (loaded like the server does)
  vad.py asr.py llm.py tts.py   what is measured for each kind of provider
  e2e.py             simulated devices (harness.devsim) against the real server, per-turn timings
  server_metrics.py  the server's own stage timings from GET /metrics
  resources.py       the server process's CPU and RSS, sampled while devices talk
  load.py            the ramp: add devices until p95 first-reply latency passes a threshold
  report.py          the run record, its JSON form, terminal tables
  compare.py         ratios between two JSON reports
  chart.py           the PNG chart (matplotlib, the optional `bench` extra)
  testset.py         built-in sentences and prompts, user WAV+transcript folders, WER/CER
  console.py stats.py machine.py   progress output, percentiles, machine description
"""
