"""mvm.engine.images: what an image is (ImageSpec, a built Image on disk, spec files, IR to
ImageSpec, the function schemas baked into an image). Building one is engine.builders'."""
