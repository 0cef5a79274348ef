"""Record what timm's own train.py does, for tests/test_timm_parity.py.

timm's pip package does not ship train.py; run this with a checkout of
huggingface/pytorch-image-models next to the installed timm:

    python tests/data/timm_parity/record.py --timm-train PATH/TO/train.py

It trains each configuration of CONFIGS on the embedded digits (as an image folder) and writes
records.json: per configuration, the summary.csv rows, args.yaml, the printed --result JSON and
the Train:/Test: log lines. The test runs train_stim.py with the same options and --seed-scheme
timm and compares. Paths in records are replaced by {DATA}, {OUT} and {TEACHER}.

Both run in a subprocess with PINNED_ENV: two epochs at lr 0.05 turn a difference in the last bit
of one convolution into a different accuracy, and CPU kernels differ by instruction set (AVX2,
AVX-512, AMX) and by thread count. One thread and AVX2 kernels in torch, oneDNN and MKL take those
differences away on x86-64 machines with AVX2 (without the pin, records made on one CI machine
failed on the next; with it, timm's train.py and ours agree bit for bit, verified on one CPU
model only).
"""
import argparse
import csv
import hashlib
import json
import os
import subprocess
import sys
import tempfile

import yaml

HERE = os.path.dirname(os.path.abspath(__file__))

COMMON = ['--model', 'resnet18', '--num-classes', '10', '--device', 'cpu', '--input-size', '3', '16', '16',
          '-b', '64', '--workers', '1', '--lr', '0.05', '--epochs', '2', '--warmup-epochs', '1', '--seed', '42',
          '--log-interval', '10']

CONFIGS = {
    'plain': [],
    'mixup': ['--mixup', '0.2', '--cutmix', '1.0', '--smoothing', '0.1'],
    'ema': ['--model-ema', '--model-ema-decay', '0.9'],
    'accum': ['--grad-accum-steps', '3'],
    'distill': ['--kd-model-name', 'local-dir:{TEACHER}', '--kd-distill-type', 'logit', '--kd-temperature', '2'],
}


# One thread (reductions split across threads sum in another order) and AVX2 code paths (the
# widest every current x86-64 machine has) in ATen, oneDNN (convolutions) and MKL (matmul).
PINNED_ENV = {'OMP_NUM_THREADS': '1', 'MKL_NUM_THREADS': '1', 'ATEN_CPU_CAPABILITY': 'avx2',
              'ONEDNN_MAX_CPU_ISA': 'AVX2', 'DNNL_MAX_CPU_ISA': 'AVX2', 'MKL_CBWR': 'AVX2',
              'PYTHONUNBUFFERED': '1'}


def run_program(program: str, argv) -> str:
    """Runs a train.py (timm's or ours) with PINNED_ENV; returns what it printed (stdout, then stderr)."""
    proc = subprocess.run([sys.executable, program, *argv], capture_output=True, text=True,
                          env=dict(os.environ, **PINNED_ENV))
    if proc.returncode != 0:
        raise RuntimeError(f'{program} {" ".join(argv)} failed:\n{proc.stderr[-3000:]}')
    return proc.stdout + proc.stderr


def make_teacher(folder: str) -> str:
    """The distillation teacher: a seeded resnet18 in timm's Hub format (the same on every machine)."""
    import timm
    import torch
    if not os.path.exists(os.path.join(folder, 'config.json')):
        torch.manual_seed(123)
        timm.models.save_for_hf(timm.create_model('resnet18', num_classes=10), folder)
    return folder


def config_argv(name: str, data: str, out: str, teacher: str):
    argv = ['--data-dir', data, *COMMON, *CONFIGS[name], '--output', out, '--experiment', name]
    return [a.replace('{TEACHER}', teacher) for a in argv]


def read_run(out_dir: str, log: str, placeholders):
    def strip(text):
        for value, name in placeholders:
            text = text.replace(value, name)
        return text
    with open(os.path.join(out_dir, 'summary.csv'), newline='') as f:
        rows = list(csv.reader(f))
    with open(os.path.join(out_dir, 'args.yaml')) as f:
        args_yaml = yaml.safe_load(strip(f.read()))
    result = json.loads(log[log.index('--result\n') + len('--result\n'):].split('\n]\n')[0] + '\n]')
    lines = [strip(line) for line in log.splitlines() if line.startswith(('Train:', 'Test:', 'Test (EMA):'))]
    return {'summary': rows, 'args_yaml': args_yaml, 'result': result, 'log_lines': lines}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--timm-train', required=True, help="timm's train.py")
    parser.add_argument('--out', default=os.path.join(HERE, 'records.json'))
    args = parser.parse_args()
    from timm_stim.training.data import materialize_embedded
    import timm
    work = tempfile.mkdtemp()
    data = materialize_embedded('digits', os.path.join(work, 'cache'))
    teacher = make_teacher(os.path.join(work, 'teacher'))
    with open(args.timm_train, 'rb') as f:
        train_py = hashlib.sha256(f.read()).hexdigest()
    records = {'timm_version': timm.__version__, 'train_py_sha256': train_py, 'env': PINNED_ENV,
               'common': COMMON, 'configs': {}}
    for name in CONFIGS:
        out = os.path.join(work, 'out')
        printed = run_program(args.timm_train, config_argv(name, data, out, teacher))
        placeholders = [(teacher, '{TEACHER}'), (data, '{DATA}'), (out, '{OUT}')]
        records['configs'][name] = {'argv': CONFIGS[name],
                                    **read_run(os.path.join(out, name), printed, placeholders)}
        print(f'{name}: {records["configs"][name]["summary"][-1]}')
    with open(args.out, 'w') as f:
        json.dump(records, f, indent=1)
    print(f'Wrote {args.out}')


if __name__ == '__main__':
    main()
