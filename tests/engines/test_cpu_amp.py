# Copyright (c) monai_msgldm contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""``cpu_amp``: bfloat16 autocast of the training and evaluation iterations on the CPU (fast with Intel AMX)."""

from __future__ import annotations

import types
import unittest

import torch
from ignite.engine import Events
from parameterized import parameterized

from monai_msgldm.engines import (
    AutoencoderEvaluator,
    AutoencoderTrainer,
    LatentDiffusionTrainer,
    RegressionSynthesisTrainer,
    StructureStyleTrainer,
    autocast_context,
    resolve_cpu_amp,
)
from monai_msgldm.inferers import MultiContrastDiffusionInferer
from tests.engines.test_autoencoder_engines import tiny_autoencoder
from tests.engines.test_engine_utils import make_loader, setUpModule, tearDownModule  # noqa: F401
from tests.engines.test_structure_engines import tiny_structure_net
from tests.inferers.test_diffusion import ddpm
from tests.networks.nets.test_msgldm import tiny_msgldm
from tests.networks.nets.test_regression import tiny_regression


def _autoencoder(cpu_amp):
    net = tiny_autoencoder()
    return net, AutoencoderTrainer(
        "cpu", 1, make_loader(), net, torch.optim.SGD(net.parameters(), 1e-2), cpu_amp=cpu_amp
    )


def _structure(cpu_amp):
    net = tiny_structure_net(0)
    opt = torch.optim.SGD(net.parameters(), 1e-2)
    return net, StructureStyleTrainer("cpu", 1, make_loader(), net, opt, cpu_amp=cpu_amp)


def _diffusion(cpu_amp):
    net = tiny_msgldm()
    net.scale_factor.fill_(0.5)
    opt = torch.optim.SGD(net.unet.parameters(), 1e-2)
    inferer = MultiContrastDiffusionInferer(ddpm("v_prediction"))
    return net, LatentDiffusionTrainer("cpu", 1, make_loader(), net, opt, inferer=inferer, cpu_amp=cpu_amp)


def _regression(cpu_amp):
    net = tiny_regression()
    opt = torch.optim.SGD(net.parameters(), 1e-2)
    return net, RegressionSynthesisTrainer("cpu", 1, make_loader(size=32), net, opt, cpu_amp=cpu_amp)


def _record_autocast(net: torch.nn.Module) -> list[bool]:
    """Whether CPU autocast was on at each convolution call of ``net``."""
    flags: list[bool] = []
    for module in net.modules():
        if isinstance(module, torch.nn.Conv2d):
            module.register_forward_pre_hook(lambda *_: flags.append(torch.is_autocast_enabled("cpu")))
    return flags


class TestResolveCpuAmp(unittest.TestCase):
    @parameterized.expand(
        [
            ("cpu", True, "cpu", True),
            ("off", False, "cpu", False),
            ("cuda", True, "cuda:0", False),
            ("none", True, None, True),
        ]
    )
    def test_resolve(self, _, cpu_amp, device, expected):
        self.assertEqual(resolve_cpu_amp(cpu_amp, device), expected)

    def test_autocast_context(self):
        """The engine's context: CPU bfloat16 autocast for ``cpu_amp`` (a matrix product comes out in bfloat16),
        nothing otherwise."""
        a, b = torch.randn(4, 8), torch.randn(8, 2)
        with autocast_context(types.SimpleNamespace(amp=False, cpu_amp=True)):
            self.assertTrue(torch.is_autocast_enabled("cpu"))
            self.assertEqual((a @ b).dtype, torch.bfloat16)
        with autocast_context(types.SimpleNamespace(amp=False, cpu_amp=False)):
            self.assertFalse(torch.is_autocast_enabled("cpu"))
            torch.testing.assert_close(a @ b, torch.mm(a, b), rtol=0, atol=0)


class TestTrainersUnderCpuAmp(unittest.TestCase):
    @parameterized.expand(
        [
            ("autoencoder", _autoencoder),
            ("structure", _structure),
            ("diffusion", _diffusion),
            ("regression", _regression),
        ]
    )
    def test_iteration(self, _, make):
        """With ``cpu_amp`` every convolution of an iteration runs under CPU autocast, the weights stay float32 and
        are updated, and the first iteration's loss is float32's within bfloat16 rounding (same seed, same draws) but
        not bit-identical; without it nothing runs under autocast."""
        losses, steps = {}, {}
        for cpu_amp in (False, True):
            torch.manual_seed(0)
            net, trainer = make(cpu_amp)
            self.assertEqual(trainer.cpu_amp, cpu_amp)
            flags = _record_autocast(net)
            before = {k: v.detach().clone() for k, v in net.state_dict().items() if v.is_floating_point()}
            first = []
            trainer.add_event_handler(
                Events.ITERATION_COMPLETED(once=1), lambda e, first=first: first.append(_loss(e.state.output))
            )
            trainer.run()
            self.assertFalse(torch.is_autocast_enabled("cpu"))
            self.assertGreater(len(flags), 0)
            self.assertEqual(set(flags), {cpu_amp})
            after = net.state_dict()
            self.assertTrue(all(after[k].dtype == torch.float32 for k in before))
            steps[cpu_amp] = sum(float((after[k] - v).abs().sum()) for k, v in before.items())
            losses[cpu_amp] = first[0]
        self.assertGreater(steps[True], 0.0)
        self.assertNotEqual(losses[True], losses[False])
        self.assertAlmostEqual(losses[True], losses[False], delta=0.05 * abs(losses[False]))


def _loss(output) -> float:
    output = output[0] if isinstance(output, list) else output
    return float(output["loss"])


class TestEvaluatorUnderCpuAmp(unittest.TestCase):
    def test_autoencoder_evaluator(self):
        """The evaluator's reconstruction under ``cpu_amp``: every convolution under CPU autocast, and the last
        batch's reconstruction within bfloat16 rounding of float32's."""
        preds = {}
        for cpu_amp in (False, True):
            torch.manual_seed(0)
            net = tiny_autoencoder()
            flags = _record_autocast(net)
            evaluator = AutoencoderEvaluator("cpu", make_loader(), net, cpu_amp=cpu_amp)
            evaluator.run()
            self.assertEqual(set(flags), {cpu_amp})
            output = evaluator.state.output
            preds[cpu_amp] = torch.stack([o["pred"] for o in output]) if isinstance(output, list) else output["pred"]
        self.assertFalse(torch.equal(preds[True].float(), preds[False]))
        torch.testing.assert_close(preds[True].float(), preds[False], rtol=0, atol=0.05)


if __name__ == "__main__":
    unittest.main()
