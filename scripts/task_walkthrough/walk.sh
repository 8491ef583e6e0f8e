#!/usr/bin/env bash
# The issue-12 walk-through: a user brings a model of each new task. Build the models first: .venv/bin/python scripts/task_walkthrough/build.py
cd "$(dirname "$0")/../.."; W=/tmp/walk; CL=.venv/bin/compress-lab
run() { echo; echo "\$ ${*/#.venv\/bin\//}"; /usr/bin/time -f "  [%e s]" "$@" 2>&1 | grep -v "^\s*$" | tail -${TAILN:-14}; }
export TQDM_DISABLE=1
run $CL info $W/regressor
run $CL evaluate $W/regressor --data $W/regressor/val.npz
run $CL compress $W/regressor --technique palettize --set nbits=2 --set weight_threshold=0 --out $W/out/reg_p2.mlpackage
run $CL evaluate $W/out/reg_p2.mlpackage --data $W/regressor/val.npz --reference $W/regressor
run $CL compress $W/regressor --technique qat --set weight_dtype="'int4'" --set steps=60 --set batch_size=64 --train $W/regressor/train.npz --out $W/out/reg_qat4.mlpackage --no-estimate
run $CL evaluate $W/out/reg_qat4.mlpackage --data $W/regressor/val.npz --reference $W/regressor
run $CL evaluate $W/bigram --data $W/bigram/val.npz
run $CL compress $W/bigram --technique quantize --set dtype="'int4'" --set weight_threshold=0 --out $W/out/lm_int4.mlpackage
run $CL evaluate $W/out/lm_int4.mlpackage --data $W/bigram/val.npz --reference $W/bigram
run $CL info $W/two_heads
run $CL compress $W/two_heads --technique palettize --set nbits=4 --set weight_threshold=0 --out $W/out/th_p4.mlpackage
run $CL evaluate $W/out/th_p4.mlpackage --data $W/two_heads/val.npz --reference $W/two_heads
run $CL compress $W/two_heads --technique qat --set steps=4 --train $W/two_heads/val.npz --out $W/out/th_qat.mlpackage --no-estimate
run $CL evaluate $W/encoder --data $W/encoder/val.npz --metric $W/mean_rank.py
run $CL compress $W/encoder --technique magnitude_pruning --set target_sparsity=0.5 --set schedule="'constant'" --set steps=80 --set batch_size=32 --set learning_rate=0.01 --train $W/encoder/train.npz --out $W/out/enc_pruned.mlpackage --no-estimate
run $CL evaluate $W/out/enc_pruned.mlpackage --data $W/encoder/val.npz --reference $W/encoder --metric $W/mean_rank.py
