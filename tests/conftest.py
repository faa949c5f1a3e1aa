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
"""Suite-wide test settings."""

from __future__ import annotations

import torch

# Tests use tiny tensors: with several intra-op threads on a busy 2-core machine, thread hand-offs cost far more
# than the arithmetic (measured ~100x slower for the tiny engine tests). One thread keeps the suite fast and stable.
torch.set_num_threads(1)
