"""CUDA parity: fp32 on a GPU reproduces the CPU, bf16 autocast stays close to fp32, and training and evaluation
with ``amp=True`` give the CPU's results (issue 11 item 7: a speed-up is kept only if results stay the same).

Skipped where torch sees no CUDA device (CI has none). On a GPU machine: ``pytest tests/engines/test_cuda.py``.
"""

import copy

import pytest
import torch
from torch.utils.data import DataLoader

from monai_protoshare.engines import PrototypeEvaluator, PrototypeTrainer, TrainingSchedule
from monai_protoshare.handlers.metric_handlers import ActivationPrecision, BalancedAccuracy
from monai_protoshare.networks import build_network, resize_trilinear
from tests.engines.test_prototype_evaluator import MaskedCases
from tests.networks.network_cases import fp64_attention_case
from tests.toy_data import TINY_NET, ToyCases

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

PROTOTYPE_MODELS = ["um_protoshare", "protopnet", "mprotonet", "maprotonet"]


@pytest.fixture(autouse=True)
def exact_fp32():
    """TF32 off, so that "fp32 on CUDA" means fp32 (Ampere and later default cuDNN convolutions to TF32)."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _network(name: str):
    torch.manual_seed(0)
    return build_network(name, **TINY_NET).eval()


@pytest.mark.parametrize("name", PROTOTYPE_MODELS)
def test_fp32_on_cuda_reproduces_the_cpu(name):
    net, images = _network(name), ToyCases(6).images
    with torch.no_grad():
        cpu = net.explain(images, online_cam=False)
        gpu = net.cuda().explain(images.cuda(), online_cam=False)
    torch.testing.assert_close(gpu.logits.cpu(), cpu.logits, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(gpu.similarities.cpu(), cpu.similarities, rtol=1e-4, atol=1e-4)
    for gpu_map, cpu_map in zip(gpu.attention, cpu.attention, strict=True):
        torch.testing.assert_close(gpu_map.cpu(), cpu_map, rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("align_corners", [False, True])
def test_resize_on_cuda_keeps_bf16_and_channels_last_and_matches_the_cpu(align_corners):
    torch.manual_seed(0)
    x = torch.randn(2, 16, 8, 8, 6, requires_grad=True)
    upstream = torch.randn(2, 16, 13, 6, 12)
    expected = torch.nn.functional.interpolate(x, size=(13, 6, 12), mode="trilinear", align_corners=align_corners)
    (expected_grad,) = torch.autograd.grad(expected, x, upstream)
    gpu_x = x.detach().cuda().requires_grad_(True)
    resized = resize_trilinear(gpu_x, (13, 6, 12), align_corners)  # fp32 on CUDA: the same values
    (grad,) = torch.autograd.grad(resized, gpu_x, upstream.cuda())
    torch.testing.assert_close(resized.cpu(), expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad.cpu(), expected_grad, rtol=1e-5, atol=1e-5)
    half = gpu_x.detach().bfloat16().contiguous(memory_format=torch.channels_last_3d)
    with torch.autocast("cuda", torch.bfloat16):
        resized = resize_trilinear(half, (13, 6, 12), align_corners)
    assert resized.dtype == torch.bfloat16 and resized.is_contiguous(memory_format=torch.channels_last_3d)
    torch.testing.assert_close(resized.float().cpu(), expected, rtol=0.02, atol=0.03)


@pytest.mark.parametrize("channels_last", [False, True])
def test_quadruplet_attention_on_cuda_equals_the_cpu_in_value_and_gradients(channels_last):
    """The fused attention on CUDA (cuFFT gate convolutions, the pooling's scatter backward) = on the CPU."""
    att, x = fp64_attention_case(0, channels_last)
    upstream = torch.randn_like(x)
    results = []
    for device in ("cpu", "cuda"):
        module, inputs = copy.deepcopy(att).to(device), x.to(device).requires_grad_()
        out = module(inputs)
        grads = torch.autograd.grad(out, (inputs, *module.parameters()), upstream.to(device))
        results.append([t.cpu() for t in (out, *grads, *module.buffers())])
    for cpu, gpu in zip(*results, strict=True):
        torch.testing.assert_close(gpu, cpu, rtol=0, atol=1e-10)


@pytest.mark.parametrize("name", PROTOTYPE_MODELS)
def test_bf16_autocast_stays_close_to_fp32(name):
    net, images = _network(name).cuda(), ToyCases(6).images.cuda()
    net.to(memory_format=torch.channels_last_3d)
    images = images.contiguous(memory_format=torch.channels_last_3d)
    with torch.no_grad():
        exact = net.explain(images, online_cam=False)
        with torch.autocast("cuda", torch.bfloat16):
            mixed = net.explain(images, online_cam=False)
    # cosine similarities lie in [-1, 1]; bf16 keeps 8 mantissa bits (relative step 2^-8 = 0.004)
    assert (mixed.similarities.float() - exact.similarities).abs().max() < 0.03
    scale = exact.logits.abs().max().clamp_min(1.0)
    assert ((mixed.logits.float() - exact.logits).abs().max() / scale) < 0.03
    for mixed_map, exact_map in zip(mixed.attention, exact.attention, strict=True):
        corr = torch.corrcoef(torch.stack([mixed_map.float().flatten(), exact_map.flatten()]))[0, 1]
        assert corr > 0.99


def test_amp_training_on_cuda_learns_the_toy_task_in_fp32_weights():
    torch.manual_seed(0)
    net = build_network("um_protoshare", **TINY_NET)
    data = ToyCases(16)
    schedule = TrainingSchedule(warmup_epochs=6, latent_epochs=6, push_interval=3, classifier_epochs=3)
    trainer = PrototypeTrainer(
        "cuda",
        net,
        DataLoader(data, batch_size=4, shuffle=True),
        schedule,
        push_data_loader=DataLoader(data, batch_size=8),
        classifier_inputs="cached",
        amp=True,
    )
    assert trainer.amp
    trainer.run()
    assert all(p.dtype == torch.float32 and p.is_cuda for p in net.parameters())
    net.eval()
    with torch.no_grad(), torch.autocast("cuda", torch.bfloat16):
        predicted = net(data.images.cuda()).argmax(1).cpu()
    assert (predicted == data.labels).float().mean() >= 0.9


@pytest.mark.parametrize("name", ["um_protoshare", "mprotonet"])
def test_amp_evaluation_on_cuda_gives_the_cpu_metrics(name):
    def evaluate(device, amp):
        net = _network(name)
        evaluator = PrototypeEvaluator(device, DataLoader(MaskedCases(6), batch_size=3), net, amp=amp)
        BalancedAccuracy().attach(evaluator, "bac")
        ActivationPrecision().attach(evaluator, "ap")
        evaluator.run()
        return evaluator.state.metrics

    cpu, gpu = evaluate("cpu", False), evaluate("cuda", True)
    assert gpu["bac"] == cpu["bac"]
    assert gpu["ap"] == pytest.approx(cpu["ap"], abs=0.02)
