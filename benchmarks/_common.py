"""Shared helpers of the benchmark scripts: machine description, timing, result files."""
import datetime
import json
import os
import platform
import statistics
import sys
import time
from typing import Any, Callable, Dict, List, Optional

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


def cpu_model() -> str:
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name'):
                    return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or 'unknown CPU'


def machine(device: torch.device) -> Dict[str, Any]:
    """What the figures were measured on."""
    info = {
        'date': datetime.date.today().isoformat(),
        'cpu': cpu_model(),
        'cpu_count': os.cpu_count(),
        'torch_threads': torch.get_num_threads(),
        'torch': torch.__version__,
        'python': platform.python_version(),
        'device': str(device),
    }
    if device.type == 'cuda':
        info['gpu'] = torch.cuda.get_device_name(device)
    import timm
    info['timm'] = timm.__version__
    return info


def describe(info: Dict[str, Any]) -> str:
    where = info.get('gpu') or f"{info['cpu']}, {info['torch_threads']} torch threads of {info['cpu_count']} CPUs"
    return f"{where}; torch {info['torch']}, timm {info['timm']}; {info['date']}"


def sync(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def median_time(step: Callable[[], None], device: torch.device, warmup: int, repeats: int) -> Dict[str, float]:
    """Median (and min/max) seconds of ``step`` after ``warmup`` untimed calls."""
    for _ in range(warmup):
        step()
    sync(device)
    times: List[float] = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        sync(device)
        times.append(time.perf_counter() - start)
    return {'median_s': statistics.median(times), 'min_s': min(times), 'max_s': max(times), 'repeats': repeats}


def resolve_device(name: Optional[str]) -> torch.device:
    """The device named (default: cuda when available), with cuDNN's autotuner on as timm's train.py sets it."""
    device = torch.device(name) if name else torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    if device.type == 'cuda':
        torch.backends.cudnn.benchmark = True
    return device


def write_json(path: str, payload: Dict[str, Any]) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, 'w') as f:
        json.dump(payload, f, indent=2)
    print(f'wrote {path}')
