# DaViT-S RetinaNet 1x (paper: box AP 46.0); drop path 0.2, the dense base config's default.
_base_ = ['./retinanet_vz-davit-tiny_fpn_1x_coco.py']
model = dict(backbone=dict(model_name='vz_davit_small', drop_path_rate=0.2))
