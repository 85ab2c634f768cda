"""The torchvision/CPU-torch mismatch is handled in one place and leaves timm usable."""

import subprocess
import sys


def test_timm_and_torchmetrics_import_after_the_fix():
    code = (
        "from hcibench.compat import ensure_torchvision_importable as fix\n"
        "state = fix()\n"
        "import timm, torchmetrics, torch\n"
        "m = timm.create_model('vit_tiny_patch16_224', pretrained=False, img_size=32, patch_size=8)\n"
        "print(state, m(torch.zeros(1, 3, 32, 32)).shape[0])\n"
        "assert fix() == state  # idempotent\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    state, batch = result.stdout.split()
    assert state in {"healthy", "patched", "absent"} and batch == "1"


def test_fix_is_a_no_op_once_torchvision_is_imported():
    code = (
        "import sys, types\n"
        "sys.modules['torchvision'] = types.ModuleType('torchvision')\n"
        "from hcibench.compat import ensure_torchvision_importable as fix\n"
        "print(fix())\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "already-imported", result.stderr
