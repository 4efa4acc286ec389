"""Models and what they train on: real data, diffusion generators, students, teachers, protocols, the training
loop and set measures; no Ray, no suite."""
