#!/bin/sh
# A live queue: the scheduler runs whatever is appended to gpu.queue, as soon as
# a GPU is free, until you stop it with Ctrl-C (which lets running jobs finish).
#
#   terminal 1:  sh examples/queue.sh
#   terminal 2:  echo 'echo "hello from GPU $CUDA_VISIBLE_DEVICES"; sleep 2' >> gpu.queue
#
# `tail -n 0` starts at the end of the file, so old lines are not run again.
# `tail -F` follows the file by name: plain `tail -f` loses it when an editor or
# `sed -i` replaces it, and lines appended after that never run. Append with
# `>>`: after a replacement `tail -F` reads the new file from its first line,
# so the commands already in it would run again.
touch gpu.queue
tail -F -n 0 gpu.queue | simple_gpu_scheduler --gpus 0,1 --joblog gpu.joblog
