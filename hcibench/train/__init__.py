"""Training: backbones, augmentation, cross-batch pairs, the modality (image or profile) as one
object, the profile models, the shared loop pieces (parameter groups, schedules, saved
progress), and the objectives built on them (classifier, DINO, MAE). Methods compose these;
nothing here names a method."""
