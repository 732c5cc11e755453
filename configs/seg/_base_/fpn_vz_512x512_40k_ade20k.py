# Semantic FPN, 40k iterations on ADE20K at 512x512 (batch 16 = 2 images/GPU x 8 GPUs), AdamW lr 2e-4, wd 1e-4,
# poly decay (power 0.9): PVT's Semantic FPN protocol, which efficient backbones report at 40k.
_base_ = ['./fpn_vz_512x512_80k_ade20k.py']
optim_wrapper = dict(optimizer=dict(lr=2e-4))
param_scheduler = [dict(type='PolyLR', power=0.9, eta_min=0.0, by_epoch=False, begin=0, end=40000)]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=40000, val_interval=4000)
default_hooks = dict(checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=4000))
