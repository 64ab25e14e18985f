"""Data parallelism: 8 virtual devices and 2 processes x 2 devices match a single device."""

from conftest import assert_same_run, load_results, overrides, run_main, run_processes

# BatchNorm and dropout on, so global-batch statistics and sharded randomness are exercised.
ARGS = overrides(num_train_steps=8, log_every_steps=1, batch_size=32,
                 **{'model.dropout': 0.1, 'model.layers': '8,p,16,p,16'})


def test_eight_devices_match_one(tmp_path):
  one, eight = str(tmp_path / 'one'), str(tmp_path / 'eight')
  run_main([f'--workdir={one}', *ARGS], devices=1)
  run_main([f'--workdir={eight}', *ARGS], devices=8)
  assert load_results(eight)['num_devices'] == 8
  assert_same_run(one, eight)


def test_two_processes_match_one(tmp_path):
  single, multi = str(tmp_path / 'single'), str(tmp_path / 'multi')
  run_main([f'--workdir={single}', *ARGS], devices=1)
  run_processes(ARGS, multi, processes=2, devices=2)
  r = load_results(multi)
  assert (r['num_processes'], r['num_devices']) == (2, 4)
  assert_same_run(single, multi)
