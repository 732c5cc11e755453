# TransNeXt-Tiny UperNet 160k (paper: mIoU 51.1): AdamW lr 6e-5, wd 0.05, auxiliary FCN head on stage 3,
# sliding-window test with 512 crops at stride 341.
_base_ = ['../_base_/upernet_vz_512x512_160k_ade20k.py']
model = dict(
    backbone=dict(model_name='vz_transnext_tiny', drop_path_rate=0.4, out_norms=True),
    decode_head=dict(in_channels=[72, 144, 288, 576]),
    auxiliary_head=dict(in_channels=288),
    test_cfg=dict(mode='slide', crop_size=(512, 512), stride=(341, 341)),
)
optim_wrapper = dict(optimizer=dict(weight_decay=0.05))
