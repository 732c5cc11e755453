# TransNeXt-Small UperNet 160k (paper: mIoU 52.2).
_base_ = ['./upernet_vz-transnext-tiny_512x512_160k_ade20k.py']
model = dict(backbone=dict(model_name='vz_transnext_small', drop_path_rate=0.6))
