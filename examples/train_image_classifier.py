"""Train a small ResNet on an ImageFolder with fastload's fused JPEG decode.

    python examples/train_image_classifier.py                 # generates 512 photos to train on
    python examples/train_image_classifier.py --data DIR      # your ImageFolder (class subfolders)

On a machine with CUDA the batches are decoded on the GPU (nvJPEG) and the model trains
there; on CPU, workers decode only the crop of each JPEG. Prints images/s and the
data-stall fraction: the share of the loop's time spent waiting for the next batch.
"""

from __future__ import annotations

import argparse
import os
import tempfile

import torch
import torchvision
from torch import nn

import fastload
from fastload.bench.images import make_image_folder
from fastload.image import ImageFolder, RandomResizedCropDecode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="an ImageFolder; default: generate one from scikit-image's photos")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--size", type=int, default=128, help="crop size (224 for ImageNet training)")
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()

    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    # Workers take a core each; more intra-op threads than the cores left only oversubscribe.
    torch.set_num_threads(max(1, (os.cpu_count() or 1) - args.workers))
    with tempfile.TemporaryDirectory() as scratch:
        root = args.data or make_image_folder(os.path.join(scratch, "photos"), 512, classes=8)
        crop = RandomResizedCropDecode(args.size, device=device)
        dataset = ImageFolder(root, transform=crop)
        loader = fastload.DataLoader(
            dataset, batch_size=args.batch_size, shuffle=True, num_workers=args.workers, drop_last=True,
            persistent_workers=True, batch_transform=crop.finish_batch, device=device,
            telemetry=True,  # loader.stats(): per-stage times and the data-stall fraction
        )
        model = torchvision.models.resnet18(num_classes=len(dataset.classes)).to(device)
        model = model.to(memory_format=torch.channels_last)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        mean = torch.tensor([0.485, 0.456, 0.406], device=device).view(1, 3, 1, 1) * 255
        std = torch.tensor([0.229, 0.224, 0.225], device=device).view(1, 3, 1, 1) * 255

        step = 0
        while step < args.steps:  # epochs, until --steps training steps
            for inputs, labels in loader:
                inputs = ((inputs.float() - mean) / std).contiguous(memory_format=torch.channels_last)
                loss = nn.functional.cross_entropy(model(inputs), labels)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                if cuda:
                    torch.cuda.synchronize()
                step += 1
                if step % 5 == 0:
                    print(f"step {step:4d}  loss {loss.item():.3f}")
                if step == args.steps:
                    break
        stats = loader.stats()  # of the last epoch
        print(stats)
        print(f"{stats.samples_per_s:.0f} images/s on {device}, data stall {stats.stall_fraction:.1%} "
              "(time waiting for batches)")

if __name__ == "__main__":
    main()
